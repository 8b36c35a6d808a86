"""Stage 8: lattice decoding over HCLG with k2, and Kaldi's decoder on the same graph and scores as the reference.

The network's scaled log-likelihoods (:func:`asrhybrid.nnet.inference.iter_loglikes`,
or a compute-loglikes archive) times the acoustic scale ``acwt`` are k2's dense
scores, one column per pdf; the k2 form of HCLG (:mod:`asrhybrid.graph.k2graph`)
reads the pdf of each arc's transition id. ``k2.intersect_dense_pruned`` over
a batch of utterances gives a state-level lattice per utterance (search beam,
output beam, min/max active states); its best path gives the words and the
transition-id alignment, and :func:`asrhybrid.decode.determinize.determinize`
turns it into a word lattice (``lattice_beam``) whose graph and acoustic costs
stay apart: the graph's scores ride along the search as an arc attribute
(``graph_scores``), the acoustic part is the rest, divided by ``acwt``
(lattices hold unscaled acoustic costs, as Kaldi writes them).

The reference is Kaldi's LatticeFasterDecoder (kaldi-hmm-gmm's
``decode_utterance_lattice_faster``, 1-best) over the same HCLG and the same
scaled scores, mapped to transition ids as Kaldi's DecodableMatrixScaledMapped does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from asrhybrid.decode.determinize import determinize, lattice_arrays
from asrhybrid.decode.lattice import WordLattice
from asrhybrid.fsa.k2_engine import k2_module
from asrhybrid.graph.k2graph import DecodingGraph
from asrhybrid.graph.mkgraph import load_hclg
from asrhybrid.kaldi_wrappers import khg

log = logging.getLogger(__name__)


@dataclass
class DecodeConfig:
    acwt: float = 0.1  # acoustic scale of the search (Kaldi's --acoustic-scale)
    prior_scale: float = 1.0  # log-likelihood = log posterior - prior_scale x log prior
    search_beam: float = 20.0  # Kaldi's --beam
    output_beam: float = 8.0  # k2's lattice pruning during the search
    min_active: int = 30
    # k2's max_active_states and Kaldi's --max-active. Past it k2 narrows its beam for the whole frame (a
    # dynamic beam), which prunes harder than Kaldi's cutoff at the same count: at Kaldi's usual 7000 k2 lost
    # Kaldi's best path on 2 of 112 synth utterances (and Kaldi k2's on 2); at 30000 both found the same paths
    max_active: int = 30000
    lattice_beam: float = 6.0  # Kaldi's --lattice-beam: word sequences kept within this of the best
    max_lattice_states: int = 20000  # bound on a determinized lattice's states (Kaldi's --max-mem)
    batch_frames: int = 20000  # frames per k2 batch


@dataclass
class Hypothesis:
    """One utterance's result: the best path's words and transition ids, its costs, and its word lattice."""

    utt: str
    words: list[int] = field(default_factory=list)
    tids: list[int] = field(default_factory=list)
    cost: float = math.inf  # graph + acwt x acoustic cost of the best path
    lattice: WordLattice | None = None
    lattice_arcs: int = 0  # arcs of the state-level lattice of the search
    error: str | None = None  # why the utterance has no result

    @property
    def ok(self) -> bool:
        return self.error is None


def check_scores(utt: str, loglikes: np.ndarray, num_pdfs: int) -> str | None:
    """Why a score matrix cannot be decoded with a graph of ``num_pdfs`` pdfs; None when it can."""
    if loglikes.ndim != 2 or loglikes.shape[1] != num_pdfs:
        return (
            f"utterance {utt}: score matrix of shape {tuple(loglikes.shape)}, the graph's model has {num_pdfs} pdfs "
            "(the acoustic model and the graph come from different trees?)"
        )
    if loglikes.shape[0] == 0:
        return f"utterance {utt}: zero frames"
    if not np.isfinite(loglikes).all():
        return f"utterance {utt}: scores that are not finite (NaN or inf)"
    return None


def decode_batch(
    graph: DecodingGraph,
    batch: list[tuple[str, np.ndarray]],
    cfg: DecodeConfig,
    device: torch.device | str = "cpu",
    lattices: bool = True,
) -> list[Hypothesis]:
    """k2 lattice decoding of ``(utt, log-likelihoods [T, num_pdfs])`` pairs (unscaled: ``cfg.acwt`` applies here)."""
    k2 = k2_module()
    results = {utt: Hypothesis(utt) for utt, _ in batch}
    good = []
    for utt, ll in batch:
        error = check_scores(utt, ll, graph.num_pdfs)
        if error:
            results[utt].error = error
        else:
            good.append((utt, ll))
    if good:
        T = max(ll.shape[0] for _, ll in good)
        scores = torch.zeros(len(good), T, graph.num_pdfs, dtype=torch.float32)
        for b, (_, ll) in enumerate(good):
            scores[b, : ll.shape[0]] = torch.from_numpy(np.ascontiguousarray(ll, dtype=np.float32)) * cfg.acwt
        segments = torch.tensor([[b, 0, ll.shape[0]] for b, (_, ll) in enumerate(good)], dtype=torch.int32)
        dense = k2.DenseFsaVec(scores.to(device), segments)
        lattice = k2.intersect_dense_pruned(
            graph.fsa_on(device),
            dense,
            search_beam=cfg.search_beam,
            output_beam=cfg.output_beam,
            min_active_states=cfg.min_active,
            max_active_states=cfg.max_active,
        )
        best = k2.shortest_path(lattice, use_double_scores=True)
        tropical = None
        if lattices:  # per state, the best score from the start and to the end (tropical), every lattice at once
            offsets = lattice.arcs.row_splits(1).cpu().tolist()
            forward = lattice.get_forward_scores(use_double_scores=True, log_semiring=False).cpu().numpy()
            backward = lattice.get_backward_scores(use_double_scores=True, log_semiring=False).cpu().numpy()
            tropical = [(forward[a:b], backward[a:b]) for a, b in zip(offsets, offsets[1:])]
        for b, (utt, _) in enumerate(good):
            _fill(results[utt], lattice[b], best[b], cfg, tropical[b] if tropical else None)
    return [results[utt] for utt, _ in batch]


def _words_of_arcs(fsa, arcs: np.ndarray | None = None) -> list[list[int]]:
    """The output labels of the given arcs (all by default) of an Fsa whose aux_labels may be ragged."""
    values, splits = _word_columns(fsa, np.arange(fsa.num_arcs) if arcs is None else arcs)
    values, splits = values.tolist(), splits.tolist()
    return [values[a:b] for a, b in zip(splits, splits[1:])]


def _word_columns(fsa, arcs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output labels of the given arcs as ragged columns (values, splits), one row per arc."""
    aux = fsa.aux_labels
    if isinstance(aux, torch.Tensor):
        return aux.cpu().numpy()[arcs], np.arange(len(arcs) + 1)
    values, splits = aux.values.cpu().numpy(), aux.shape.row_splits(1).cpu().numpy()
    begin, end = splits[arcs], splits[arcs + 1]
    lengths = end - begin
    rows = np.concatenate([[0], np.cumsum(lengths)])
    index = np.repeat(begin - rows[:-1], lengths) + np.arange(rows[-1])
    return values[index], rows


def _fill(hyp: Hypothesis, lattice, best, cfg: DecodeConfig, tropical) -> None:
    if best.num_arcs == 0:
        hyp.error = f"utterance {hyp.utt}: no path reached the end of the graph within the search beams"
        return
    labels = best.labels.cpu()
    hyp.words = [w for ws in _words_of_arcs(best) for w in ws if w > 0]
    hyp.tids = best.tids.cpu()[labels != -1].tolist()
    hyp.cost = -float(best.scores.cpu().to(torch.float64).sum())
    hyp.lattice_arcs = lattice.num_arcs
    if tropical is None:
        return
    arcs = lattice.arcs.values().cpu().numpy()
    scores = lattice.scores.detach().cpu().to(torch.float64).numpy()
    graph = lattice.graph_scores.detach().cpu().to(torch.float64).numpy()
    # the arcs on no path within the lattice beam go first
    forward, backward = tropical
    keep = np.nonzero(forward[arcs[:, 0]] + scores + backward[arcs[:, 1]] >= backward[0] - cfg.lattice_beam)[0]
    # the states of the kept arcs, renumbered in order (the start stays 0, the order stays topological)
    states, renumbered = np.unique(np.concatenate([[0], arcs[keep, 0], arcs[keep, 1]]), return_inverse=True)
    src, dst = renumbered[1 : 1 + len(keep)], renumbered[1 + len(keep) :]
    word_values, word_splits = _word_columns(lattice, keep)
    state_lattice = lattice_arrays(
        len(states),
        src,
        dst,
        word_values,
        word_splits,
        -graph[keep],
        -(scores[keep] - graph[keep]),
        lattice.tids.cpu().numpy()[keep],
        arcs[keep, 2] == -1,
    )
    hyp.lattice, stats = determinize(state_lattice, cfg.lattice_beam, cfg.acwt, cfg.max_lattice_states)
    if stats.hit_max_states:
        log.warning(
            "utterance %s: the lattice reached %d states (max_lattice_states): the best paths kept, the rest cut",
            hyp.utt,
            cfg.max_lattice_states,
        )


# --- the reference: Kaldi's LatticeFasterDecoder ------------------------------------------


class KaldiDecoder:
    """kaldi-hmm-gmm's LatticeFasterDecoder over the graph's HCLG (a ConstFst) with ``cfg``'s beams.

    The decoder keeps a pointer to the FST, not a reference: the FST is held here for the decoder's life."""

    def __init__(self, graph: DecodingGraph, cfg: DecodeConfig):
        opts = khg.LatticeFasterDecoderConfig()
        opts.beam, opts.max_active, opts.min_active, opts.lattice_beam = (
            cfg.search_beam,
            cfg.max_active,
            cfg.min_active,
            cfg.lattice_beam,
        )
        self.graph, self.cfg, self.fst = graph, cfg, load_hclg(graph.graph_dir)
        self.decoder = khg.LatticeFasterDecoderStdConstFst(self.fst, opts)

    def decode(self, utt: str, loglikes: np.ndarray) -> Hypothesis:
        """The 1-best of one utterance: words, transition ids and cost (graph + acwt x acoustic)."""
        graph, cfg = self.graph, self.cfg
        error = check_scores(utt, loglikes, graph.num_pdfs)
        if error:
            return Hypothesis(utt, error=error)
        mapped = np.ascontiguousarray(cfg.acwt * loglikes[:, graph.tid_to_pdf[1:]], dtype=np.float32)
        ok, tids, words, loglike = khg.decode_utterance_lattice_faster(
            self.decoder, khg.DecodableCtc(mapped), graph.trans_model, utt, False
        )
        if not ok:
            return Hypothesis(utt, error=f"utterance {utt}: Kaldi's decoder reached no final state")
        return Hypothesis(utt, words=[w for w in words if w > 0], tids=list(tids), cost=-float(loglike))
