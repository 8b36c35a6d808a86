"""FSAs as tensors and the operations on them, through k2 or asrhybrid's own torch engine (asrhybrid.fsa.engine)."""

from asrhybrid.fsa.engine import (
    ENGINES,
    arc_posteriors,
    default_engine,
    get_tot_scores,
    resolve_engine,
    shortest_path,
    state_posteriors,
)
from asrhybrid.fsa.fsa import BestPath, DenseFsaVec, Fsa, FsaVec, from_kaldi, to_kaldi

__all__ = [
    "ENGINES",
    "BestPath",
    "DenseFsaVec",
    "Fsa",
    "FsaVec",
    "from_kaldi",
    "to_kaldi",
    "arc_posteriors",
    "default_engine",
    "get_tot_scores",
    "resolve_engine",
    "shortest_path",
    "state_posteriors",
]
