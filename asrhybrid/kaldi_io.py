"""Kaldi tables (archives and scp files), the one place that reads and writes them (through kaldi-native-io).

Alignments are int32-vector archives (what Kaldi's ali.*.gz hold, uncompressed); CMVN statistics are
double-matrix archives. Archives are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asrhybrid.errors import DataError
from asrhybrid.recipe.outputs import atomic_output, temporary_sibling


def _require(path: Path) -> Path:
    if not Path(path).is_file():
        raise DataError([f"{path} not found (the stage that writes it has not run?)"])
    return Path(path)


def write_alignments(path: Path, alignments: dict[str, list[int]]) -> None:
    """Kaldi int32-vector archive of transition ids (what ali.*.gz holds in Kaldi, uncompressed)."""
    import kaldi_native_io as kio

    with atomic_output(path) as tmp, kio.Int32VectorWriter(f"ark:{tmp}") as writer:
        for utt in sorted(alignments):
            writer.write(utt, alignments[utt])


def read_alignments(path: Path) -> dict[str, list[int]]:
    import kaldi_native_io as kio

    with kio.SequentialInt32VectorReader(f"ark:{_require(path)}") as reader:
        return {key: list(value) for key, value in reader}


def write_alignment_table(out_dir: Path, alignments: dict[str, list[int]]) -> None:
    """``ali.ark`` + ``ali.scp`` (Kaldi int32-vector table), written under temporary names, then renamed."""
    import kaldi_native_io as kio

    ark, scp = out_dir / "ali.ark", out_dir / "ali.scp"
    tmp_ark, tmp_scp = temporary_sibling(ark), temporary_sibling(scp)
    with kio.Int32VectorWriter(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
        for utt in sorted(alignments):
            writer.write(utt, alignments[utt])
    tmp_scp.write_text(tmp_scp.read_text().replace(str(tmp_ark), str(ark.resolve())))
    # both complete before either lands: two renames in a row (the step's marker, written after, vouches for the pair)
    os.replace(tmp_ark, ark)
    os.replace(tmp_scp, scp)


def write_matrices(path: Path, matrices: dict[str, np.ndarray]) -> None:
    """A double-matrix archive, keys sorted (no scp: it would name the temporary file)."""
    import kaldi_native_io as kio

    with atomic_output(path) as tmp, kio.DoubleMatrixWriter(f"ark:{tmp}") as writer:
        for key in sorted(matrices):
            writer.write(key, matrices[key])


def read_matrices(path: Path) -> dict[str, np.ndarray]:
    import kaldi_native_io as kio

    out = {}
    with kio.SequentialDoubleMatrixReader(f"ark:{_require(path)}") as reader:
        for key, mat in reader:
            out[key] = np.array(mat, copy=True)  # the reader reuses its buffer
    return out
