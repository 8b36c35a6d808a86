"""LF-MMI's denominator graph (Kaldi's den.fst, chain-make-den-fst): the phone LM through the context dependency
and the HMMs, as an acceptor over pdf ids + 1.

As Kaldi builds it: the phone LM (asrhybrid.chain.phone_lm) composed with the context FST and the HMM
transducer with every transition probability left out (transition and self-loop scales 0: the network's
outputs and the LM are the only scores), transition ids mapped to pdf ids + 1, epsilons removed and the
acceptor minimised with labels and weights encoded. It is not determinised: Kaldi does not either, and on a
phone LM with the states the estimator leaves that is unnecessary (Povey et al. 2016 section 2.3).

The initial probabilities are Kaldi's (DenominatorGraph::SetInitialProbs): each state's outgoing weights
normalised to sum to one, 100 steps of the HMM from the start state, the state distribution averaged over
them. The leaky HMM enters through them, and a chunk cut out of an utterance starts from them.

The normalisation FST (Kaldi's DenominatorGraph::GetNormalizationFst) is the same graph entered from a new
start state with those initial probabilities: composed with a numerator, it gives each numerator path the
weight the denominator gives it, so the numerator is a subset of the denominator's paths (asrhybrid.chain
.supervision).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asrhybrid.chain.phone_lm import PhoneLm
from asrhybrid.fsa import Fsa, from_kaldi, to_kaldi
from asrhybrid.graph.mkgraph import count_arcs
from asrhybrid.kaldi_wrappers import kaldifst, khg
from asrhybrid.outputs import atomic_output

log = logging.getLogger(__name__)

INITIAL_STEPS = 100  # Kaldi's num_iters in SetInitialProbs


@dataclass
class DenominatorGraph:
    """The acceptor (labels pdf + 1, last state the final one) and the log initial probability of each of its
    states but the final one."""

    fsa: Fsa
    initial: torch.Tensor  # float64 [num_states - 1]
    num_pdfs: int

    @property
    def label_to_column(self) -> torch.Tensor:
        """Label (pdf + 1) to the network output's column (pdf)."""
        return torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(self.num_pdfs)])

    def save(self, path: Path | str) -> None:
        f = self.fsa
        state = {"src": f.src, "dst": f.dst, "label": f.label, "score": f.score, "num_states": f.num_states}
        with atomic_output(Path(path)) as tmp:
            torch.save({"fsa": state, "initial": self.initial, "num_pdfs": self.num_pdfs}, tmp)

    def normalization_fst(self, all_final: bool = False):
        """Kaldi's normalisation FST as a kaldifst acceptor over pdf + 1, sorted on its labels: a new start state
        (0) whose arcs are every state's arcs weighted by that state's initial probability (the epsilon arcs to
        each state, removed), then the graph; final where the denominator may end: everywhere with ``all_final``
        (Kaldi's), else where the graph may end."""
        g, n = self.fsa, self.fsa.num_states - 1  # n: the graph's final state
        emitting = g.label > 0
        src, dst, label, score = g.src[emitting], g.dst[emitting], g.label[emitting], g.score[emitting]
        if all_final:
            final_src, final_score = torch.arange(n), torch.zeros(n)
        else:
            into_final = g.label == -1
            final_src, final_score = g.src[into_final], g.score[into_final]
        start_score = score + self.initial.to(score.dtype)[src]
        entered = torch.isfinite(start_score)  # a state 100 steps do not reach has no initial probability
        fsa = Fsa(
            torch.cat([torch.zeros_like(src[entered]), src + 1, final_src + 1]),
            torch.cat([dst[entered] + 1, dst + 1, torch.full_like(final_src, n + 1)]),
            torch.cat([label[entered], label, torch.full_like(final_src, -1)]),
            torch.cat([start_score[entered], score, final_score]).float(),
            n + 2,
        )
        fst = to_kaldi(fsa)
        kaldifst.arcsort(fst, sort_type="ilabel")
        return fst

    @classmethod
    def load(cls, path: Path | str) -> "DenominatorGraph":
        data = torch.load(path, weights_only=True)
        f = data["fsa"]
        return cls(Fsa(f["src"], f["dst"], f["label"], f["score"], f["num_states"]), data["initial"], data["num_pdfs"])


def make_den_graph(phone_lm: PhoneLm, tree, trans_model) -> DenominatorGraph:
    """The denominator graph of ``phone_lm`` (phone ids of the lang dir ``tree`` and ``trans_model`` were built
    on). Logs the size after each step, as chain-make-den-fst does."""
    started = time.perf_counter()
    lm = phone_lm.to_fst()
    log.info("phone LM: %d states, %d arcs", lm.num_states, count_arcs(lm))
    context_lm, ilabels = kaldifst.compose_context(
        disambig_syms=[], context_width=tree.context_width, central_position=tree.central_position, ifst=lm
    )
    kaldifst.arcsort(context_lm, sort_type="ilabel")
    log.info("context-dependent phone LM: %d states, %d arcs", context_lm.num_states, count_arcs(context_lm))
    h, disambig = khg.get_h_transducer(
        ilabel_info=ilabels, ctx_dep=tree, trans_model=trans_model, config=khg.HTransducerConfig(transition_scale=0.0)
    )
    if disambig:
        raise ValueError(f"the HMM transducer of a phone LM has disambiguation symbols {disambig}")
    kaldifst.arcsort(h, sort_type="olabel")
    tids = kaldifst.StdVectorFst(kaldifst.compose(h, context_lm))
    tids = khg.add_self_loops(self_loop_scale=0.0, reorder=True, trans_model=trans_model, ifst=tids)
    log.info("transition-id FST: %d states, %d arcs", tids.num_states, count_arcs(tids))

    fsa = from_kaldi(tids)  # the input side only: transition ids
    tid_to_pdf = torch.as_tensor(np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64))
    emitting = fsa.label > 0
    fsa.label[emitting] = tid_to_pdf[fsa.label[emitting]] + 1
    pdfs = to_kaldi(fsa)
    kaldifst.rmepsilon(pdfs)
    log.info("pdf acceptor without epsilons: %d states, %d arcs", pdfs.num_states, count_arcs(pdfs))
    kaldifst.minimize_encoded(pdfs)
    kaldifst.arcsort(pdfs, sort_type="ilabel")
    den = from_kaldi(pdfs)
    log.info(
        "denominator graph: %d states, %d arcs, made in %.1f s",
        den.num_states - 1,
        int((den.label > 0).sum()),
        time.perf_counter() - started,
    )
    unseen = trans_model.num_pdfs - int(torch.unique(den.label[den.label > 0]).numel())
    if unseen:
        log.warning("%d of %d pdfs are on no arc of the denominator graph", unseen, trans_model.num_pdfs)
    return DenominatorGraph(den, initial_log_probs(den), trans_model.num_pdfs)


def initial_log_probs(fsa: Fsa, steps: int = INITIAL_STEPS) -> torch.Tensor:
    """Kaldi's initial probabilities of a denominator graph's states (log, float64; the final state excluded)."""
    n = fsa.num_states - 1
    weight = torch.exp(fsa.score.double())
    out_total = torch.zeros(fsa.num_states, dtype=torch.float64).index_add(0, fsa.src, weight)
    emitting = fsa.label > 0
    src, dst = fsa.src[emitting], fsa.dst[emitting]
    step_weight = weight[emitting] / out_total[src]  # normalised over each state's arcs and its final weight
    prob = torch.zeros(n, dtype=torch.float64)
    prob[0] = 1.0
    average = torch.zeros(n, dtype=torch.float64)
    for _ in range(steps):
        average += prob / steps  # before the step, as Kaldi does: the start state keeps 1/steps of the mass
        prob = torch.zeros(n, dtype=torch.float64).index_add(0, dst, prob[src] * step_weight)
        prob = prob / prob.sum()  # the final weights' share leaves the HMM: renormalised, as Kaldi does
    return torch.log(average)
