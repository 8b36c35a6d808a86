"""A training's numbers depend only on its seed: a fixed number of intra-op threads (a reduction split over
more threads adds in another order), torch's deterministic algorithms, and a report of the CPU kernels it ran
(asrhybrid.kernels pins them to AVX2 at package import)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from asrhybrid.errors import ConfigError
from asrhybrid.kernels import AVX2_KERNELS


def fix_training_threads(num_threads: int) -> None:
    """``num_threads`` intra-op threads, not the machine's core count, and torch's deterministic algorithms
    where one exists (a warning where none does, as for CTC's CUDA backward); cuBLAS needs its workspace fixed
    for deterministic GEMMs."""
    if num_threads < 1:
        raise ConfigError(f"num_threads={num_threads}: at least 1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def intra_op_threads(num_threads: int | None) -> Iterator[None]:
    """``num_threads`` intra-op threads inside the block (None: as they are), as before after it: a job of
    several on one machine takes one core, whether the engine runs it in its own process or in this one."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_kernels() -> dict[str, str]:
    """What this process runs, for a training's summary: torch's ATen capability, its threads, the variables."""
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        **{name: os.environ.get(name, "") for name in AVX2_KERNELS},
    }
