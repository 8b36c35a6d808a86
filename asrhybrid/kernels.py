"""The same numbers from the same seed on any x86-64 machine: which CPU kernels torch, MKL and oneDNN run.

torch picks its vectorised kernels (ATen: default, AVX2, AVX-512) by the CPU's instruction set, and so do MKL
(its GEMM code path) and oneDNN (convolutions); each rounds differently, so a model trained from one seed on
an AVX-512 machine differs from the same seed's on an AVX2 machine from the first step on (measured on 2026-12-02:
ATEN_CPU_CAPABILITY=default against avx2 changed every weight of a small LSTMP, DNN and convolution after 30
Adam steps; DNNL_MAX_CPU_ISA changed the convolution's; the thread count, 1 or 2, changed none). Every x86-64
CPU of the last decade has AVX2, so :func:`pin_cpu_kernels` asks all three for their AVX2 code where the user
has not chosen (the variables below are read at the first tensor operation, hence at package import). A user
who sets one of them (``ATEN_CPU_CAPABILITY=default`` to imitate an older machine) gets what they set.

The same module asks OpenMP's idle threads to sleep (:func:`sleep_idle_threads`): by default they spin, and two
processes of two threads each on two cores (two training jobs, or two test workers) then spin against each other
(measured on 2026-12-03, an LSTM's 15 training steps: 0.7-0.9 s alone, 217 s each when two ran at once; 1.3-1.7 s
with sleeping threads, which cost 1.0 s alone).

This module must not import torch: the package imports it first (asrhybrid/__init__.py), and OpenMP reads its
variables when torch loads it. The training side (threads, deterministic algorithms) is asrhybrid.determinism.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import MutableMapping

# variable -> its AVX2 value (torch's ATen dispatch, MKL's conditional numerical reproducibility, oneDNN's ISA)
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def pin_cpu_kernels(environ: MutableMapping[str, str] = os.environ, flags: set[str] | None = None) -> dict[str, str]:
    """Set each of AVX2_KERNELS that the user left unset, on an x86-64 CPU with AVX2 and FMA (torch's own test
    for its AVX2 kernels); returns what it set. Elsewhere (ARM, older x86) nothing is set: torch would run AVX2
    code on a CPU without it if asked."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    flags = cpu_flags() if flags is None else flags
    if not {"avx2", "fma"} <= flags:
        return {}
    chosen = {name: value for name, value in AVX2_KERNELS.items() if name not in environ}
    environ.update(chosen)
    return chosen


def sleep_idle_threads(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: an idle OpenMP thread sleeps instead of spinning, so
    processes that share the cores do not stall each other. Returns what it set."""
    if "OMP_WAIT_POLICY" in environ:
        return {}
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"OMP_WAIT_POLICY": "PASSIVE"}
