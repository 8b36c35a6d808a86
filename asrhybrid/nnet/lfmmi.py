"""LF-MMI's objective (Povey et al. 2016, "Purely sequence-trained neural networks for ASR based on lattice-free
MMI"): per sequence, the log-likelihood of the network's outputs under its numerator graph (the transcript's
training graph over pdfs) minus their log-likelihood under the denominator graph (a phone LM through the
context dependency and the HMMs, with the leaky HMM: asrhybrid.fsa.denominator). Both in double precision.

As in Kaldi's chain models the outputs are used as they are, as log-likelihoods (no log-softmax): the
denominator normalises. The objective is maximised; its gradient with respect to the outputs is the
numerator's occupation posteriors minus the denominator's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asrhybrid.fsa import DenseFsaVec, Fsa, get_tot_scores
from asrhybrid.fsa.denominator import DenominatorTopology, denominator_log_likelihood


@dataclass
class LfmmiObjective:
    objective: torch.Tensor  # [B] float64: numerator - denominator
    numerator: torch.Tensor  # [B]
    denominator: torch.Tensor  # [B]


def lfmmi_objective(
    dense: DenseFsaVec,
    num_graphs: list[Fsa],
    den_graph: Fsa | DenominatorTopology,
    leaky: float = 0.1,
    den_initial: torch.Tensor | None = None,
    engine: str | None = None,
    den_dense: DenseFsaVec | None = None,
) -> LfmmiObjective:
    """The LF-MMI objective of each sequence of ``dense`` (the network's outputs as log-likelihoods, one per
    column): ``num_graphs[b]`` its numerator graph (through ``engine``: k2 or asrhybrid's torch engine),
    ``den_graph`` the denominator shared by all (or its prepared topology), with Kaldi chain's leaky HMM
    coefficient ``leaky`` (0.1). ``den_dense``: the same outputs as the denominator reads them, where its labels
    map to columns otherwise (pdf + 1 there, transition ids in the numerators) or the numerator's scores carry
    the alignment's limits (asrhybrid.chain.supervision)."""
    numerator = get_tot_scores(num_graphs, dense, log_semiring=True, engine=engine).double()
    denominator = denominator_log_likelihood(den_graph, den_dense or dense, leaky, den_initial)
    return LfmmiObjective(numerator - denominator, numerator, denominator)
