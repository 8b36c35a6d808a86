"""One API over the two FSA engines: ``k2`` (the default wherever it imports) and ``torch`` (asrhybrid's own).

Every operation takes the graphs as a list of :class:`~asrhybrid.fsa.fsa.Fsa`
(one per utterance, as from :func:`~asrhybrid.fsa.fsa.from_kaldi`) and the
frame scores as a :class:`~asrhybrid.fsa.fsa.DenseFsaVec` (with its
label-to-column mapping, e.g. transition id to pdf), and returns the same
thing from either engine. Arcs and states are numbered as in
``FsaVec.from_fsas(fsas)``: the FSAs' arcs and states concatenated.

The engines differ where their docstrings say (asrhybrid.fsa.k2_engine,
asrhybrid.fsa.intersect): k2 removes input epsilons first and scores in
float32; the torch engine keeps epsilons, scores in the dtype it is given
and needs no compiled library.
"""

from __future__ import annotations

import numpy as np
import torch

from asrhybrid.fsa import intersect, k2_engine
from asrhybrid.fsa.fsa import BestPath, DenseFsaVec, Fsa, FsaVec

ENGINES = ("k2", "torch")


def default_engine() -> str:
    return "k2" if k2_engine.available() else "torch"


def resolve_engine(engine: str | None) -> str:
    engine = engine or default_engine()
    if engine not in ENGINES:
        raise ValueError(f"unknown FSA engine '{engine}' (expected one of {', '.join(ENGINES)})")
    if engine == "k2" and not k2_engine.available():
        raise RuntimeError("the k2 engine was asked for but k2 does not import; run `make setup`")
    return engine


def shortest_path(fsas: list[Fsa], dense: DenseFsaVec, engine: str | None = None) -> BestPath:
    """Viterbi: the best path of each graph through its utterance's frames, and its frame labels."""
    if resolve_engine(engine) == "k2":
        return BestPath(*k2_engine.shortest_path(fsas, dense))
    return intersect.shortest_path(FsaVec.from_fsas(fsas, dense.log_probs.device), dense)


def get_tot_scores(
    fsas: list[Fsa], dense: DenseFsaVec, log_semiring: bool = True, engine: str | None = None
) -> torch.Tensor:
    """Total score per utterance: log-sum over paths (differentiable wrt ``dense.log_probs``: the
    building block of CTC/MMI-style losses) or, with ``log_semiring=False``, the best path's score."""
    if resolve_engine(engine) == "k2":
        return k2_engine.get_tot_scores(fsas, dense, log_semiring)
    return intersect.get_tot_scores(FsaVec.from_fsas(fsas, dense.log_probs.device), dense, log_semiring)


def arc_posteriors(fsas: list[Fsa], dense: DenseFsaVec, engine: str | None = None):
    """(totals [B], occupation posteriors [T, emitting arcs], the emitting arcs' ids)."""
    if resolve_engine(engine) == "k2":
        return k2_engine.arc_posteriors(fsas, dense)
    return intersect.arc_posteriors(FsaVec.from_fsas(fsas, dense.log_probs.device), dense)


def state_posteriors(fsas: list[Fsa], dense: DenseFsaVec, engine: str | None = None) -> torch.Tensor:
    """Occupation of each state right after each frame, [T, total states]: the emitting arcs entering it."""
    _, posteriors, emit = arc_posteriors(fsas, dense, engine)
    offsets = np.cumsum([0] + [f.num_states for f in fsas])[:-1]
    dst = torch.cat([f.dst + int(o) for f, o in zip(fsas, offsets)]).to(posteriors.device)
    out = torch.zeros(
        posteriors.shape[0], int(sum(f.num_states for f in fsas)), dtype=posteriors.dtype, device=posteriors.device
    )
    return out.index_add_(1, dst[emit], posteriors)
