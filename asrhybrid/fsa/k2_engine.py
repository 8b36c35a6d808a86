"""The k2 engine: asrhybrid.fsa's operations through k2 (intersect_dense, shortest_path, get_tot_scores).

Graphs. An :class:`~asrhybrid.fsa.fsa.Fsa` becomes a ``k2.Fsa`` once
(:func:`to_k2` caches it on the Fsa). k2's intersect_dense makes every arc
consume a frame, so input epsilons are removed first with
``k2.remove_epsilon``, which is exact in the tropical semiring; in the log
semiring it is exact where no two epsilon paths join the same pair of
states, as in Kaldi's training graphs (tests/test_fsa_k2.py checks the
totals against the torch engine, which keeps the epsilons). Every arc of
the result remembers the emitting arc of the original FSA it stands for
(attribute ``arc_id``, -1 on final arcs), so posteriors come back per
original arc, in the torch engine's layout. A transducer's ``aux_label``
(HCLG's words) becomes k2's ``aux_labels``, ragged after epsilon removal
(a path's words are its arcs' ragged values).

Scores. The ``DenseFsaVec`` maps labels to score columns (``label_to_column``,
e.g. transition id to pdf). The k2 form of a graph carries that mapping in
its labels (set after epsilon removal, since a column may be 0, which k2's
intersection reads as an ordinary symbol), so the scores go to k2 as they
are, one column per pdf, and gradients flow back to the network's outputs. k2 wants
its supervision segments by decreasing length and its graphs in the same
order: both are sorted, and results come back in the caller's order.

What k2 has that the torch engine lacks: pruned intersection
(``intersect_dense_pruned``, for decoding graphs), determinization, lattice
operations, RNN-T losses, and epsilon removal itself. What the torch engine
has that k2 lacks: scores in float64 (k2's DenseFsaVec is float32) and
frames with epsilon arcs kept as they are (no epsilon removal, exact in
both semirings on any epsilon-acyclic graph); and it needs no compiled
library, so it is the CUDA path where k2 was built without CUDA.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from asrhybrid.fsa.fsa import DenseFsaVec, Fsa


@functools.cache
def available() -> bool:
    """Whether k2 imports here (built by `make setup`; absent on a machine set up without it)."""
    try:
        import k2  # noqa: F401
    except ImportError:
        return False
    return True


def with_cuda() -> bool:
    """Whether the installed k2 was built with CUDA (`make setup` builds it for CPU)."""
    return available() and bool(k2_module().with_cuda)


def k2_module():
    try:
        import k2  # optional (make setup builds it): k2_module says how to get it
    except ImportError as e:
        raise RuntimeError(f"k2 is not installed ({e}); run `make setup`, or use the torch engine") from None
    return k2


def to_k2(fsa: Fsa, label_to_column: torch.Tensor, device: torch.device | str = "cpu"):
    """The epsilon-free, arc-sorted ``k2.Fsa`` of ``fsa`` on ``device`` (converted once per mapping, then cached).

    Input epsilons are removed first; then each arc's label becomes the score
    column of its original label (``label_to_column``: k2's label ``c`` reads
    column ``c`` of the scores), so a graph over transition ids reads pdf
    scores as the network gives them. The original arc of each arc is its ``arc_id``.
    """
    k2 = k2_module()
    key = label_to_column.detach().cpu().to(torch.int64)
    if fsa.k2_cache is None or not torch.equal(fsa.k2_cache[0], key):
        top = int(fsa.label.max()) if fsa.num_arcs else 0
        if top >= len(key):
            raise ValueError(f"label {top} has no score column (label_to_column has {len(key)} entries)")
        order = torch.argsort(fsa.src, stable=True)  # k2 wants arcs grouped by source state
        label = fsa.label[order]
        arcs = torch.stack(
            [
                fsa.src[order].to(torch.int32),
                fsa.dst[order].to(torch.int32),
                label.to(torch.int32),
                fsa.score[order].to(torch.float32).view(torch.int32),
            ],
            dim=1,
        ).contiguous()
        graph = k2.Fsa(arcs)
        # arc_id + 1 on emitting arcs, 0 (k2's filler) elsewhere: after epsilon removal each arc's
        # ragged list holds the one emitting arc it consumes a frame with (none on final arcs)
        graph.arc_id = torch.where(label > 0, order + 1, torch.zeros_like(order)).to(torch.int32)
        if fsa.aux_label is not None:
            graph.aux_labels = fsa.aux_label[order].to(torch.int32)
        if bool((label == 0).any()):
            graph = k2.connect(k2.remove_epsilon(graph))
            ids = graph.arc_id
            graph.arc_id = (ids.sum() - 1).to(torch.int32) if isinstance(ids, k2.RaggedTensor) else ids - 1
        else:
            graph.arc_id = graph.arc_id - 1
        arc = graph.arc_id.to(torch.int64)
        graph.labels = torch.where(arc >= 0, key[fsa.label[arc.clamp(min=0)]], -1).to(torch.int32)
        fsa.k2_cache = (key, k2.arc_sort(graph))
    return fsa.k2_cache[1].to(device)


def dense_fsa_vec(dense: DenseFsaVec, sort: bool = True):
    """(k2.DenseFsaVec of the scores, the utterance of each of its segments).

    ``sort``: segments by decreasing length, as intersect_dense needs
    (intersect_dense_pruned does not: then segment b is utterance b). k2
    copies only the frames within each length (float32), so frames past a
    length are never read.
    """
    k2 = k2_module()
    lengths = dense.lengths.cpu().to(torch.int64)
    order = torch.argsort(-lengths, stable=True) if sort else torch.arange(len(lengths))
    segments = torch.stack([order, torch.zeros_like(order), lengths[order]], dim=1).to(torch.int32)
    return k2.DenseFsaVec(dense.log_probs.to(torch.float32), segments), order


def _lattice(fsas: list[Fsa], dense: DenseFsaVec, output_beam: float):
    """(lattices in decreasing-length order, which k2 needs, and ``rank``: utterance b's lattice is ``rank[b]``)."""
    k2 = k2_module()
    if len(fsas) != dense.log_probs.shape[0]:
        raise ValueError(f"{len(fsas)} graphs for {dense.log_probs.shape[0]} utterances")
    k2_dense, order = dense_fsa_vec(dense)
    device = dense.log_probs.device
    graphs = k2.create_fsa_vec([to_k2(fsas[b], dense.label_to_column, device) for b in order.tolist()])
    lattice = k2.intersect_dense(graphs, k2_dense, output_beam, frame_idx_name="frame")
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return lattice, rank


def _original_arcs(fsas: list[Fsa], lattice, rank: torch.Tensor, device):
    """Per lattice arc: (its utterance, the index of its graph arc in the FsaVec of ``fsas``; -1 on final arcs)."""
    shape = lattice.arcs.shape()
    order = torch.argsort(rank).to(device)  # lattice k is utterance order[k]
    utt = order[shape.row_ids(1)[shape.row_ids(2)].to(torch.int64).to(device)]
    offsets = torch.tensor(np.cumsum([0] + [f.num_arcs for f in fsas])[:-1], dtype=torch.int64, device=device)
    arc = lattice.arc_id.to(torch.int64).to(device)
    return utt, torch.where(arc >= 0, offsets[utt] + arc, arc)


# output_beam for totals and posteriors: everything (the pruning is exact, relative to the best path)
_ALL = 1e10


def get_tot_scores(fsas: list[Fsa], dense: DenseFsaVec, log_semiring: bool = True) -> torch.Tensor:
    """Total score of each graph with its utterance (-inf where no path); differentiable wrt ``dense.log_probs``."""
    lattice, rank = _lattice(fsas, dense, _ALL if log_semiring else 1.0)
    totals = lattice.get_tot_scores(use_double_scores=True, log_semiring=log_semiring)
    return totals[rank.to(totals.device)].to(dense.log_probs.dtype)


def shortest_path(fsas: list[Fsa], dense: DenseFsaVec, output_beam: float = 1.0):
    """Viterbi through k2: (scores [B], per utterance the label of each frame; [] where no path).

    intersect_dense searches exhaustively; ``output_beam`` only prunes the
    lattice it returns, around the best path, so any beam keeps the best path
    (a small one is much faster: DESIGN.md section 5).
    """
    k2 = k2_module()
    with torch.no_grad():
        lattice, rank = _lattice(fsas, dense, output_beam)
        best = k2.shortest_path(lattice, use_double_scores=True)
        scores = best.get_tot_scores(use_double_scores=True, log_semiring=False)
        utt, arc = _original_arcs(fsas, best, rank, "cpu")
    keep = arc >= 0  # the final arc consumes no frame
    utt, labels = utt[keep], torch.cat([f.label for f in fsas])[arc[keep]]
    by_utt = torch.argsort(utt, stable=True)  # each path's arcs stay in path order
    counts = torch.bincount(utt, minlength=len(fsas)).tolist()
    paths = [p.tolist() for p in torch.split(labels[by_utt], counts)]
    return scores[rank.to(scores.device)].to(dense.log_probs.dtype), paths


def arc_posteriors(fsas: list[Fsa], dense: DenseFsaVec):
    """(totals [B], posteriors [T, emitting arcs], emitting arc ids): as the torch engine's, arcs numbered
    as in ``FsaVec.from_fsas(fsas)`` (the FSAs' arcs concatenated)."""
    device = dense.log_probs.device
    with torch.no_grad():
        lattice, rank = _lattice(fsas, dense, _ALL)
        totals = lattice.get_tot_scores(use_double_scores=True, log_semiring=True)[rank.to(lattice.device)]
        post = torch.exp(lattice.get_arc_post(use_double_scores=True, log_semiring=True)).to(device)
        _, arc = _original_arcs(fsas, lattice, rank, device)
    emit = torch.nonzero(torch.cat([f.label for f in fsas]).to(device) > 0).squeeze(1)
    keep = arc >= 0  # final arcs carry no frame
    frames = int(dense.lengths.max()) if len(fsas) else 0
    out = torch.zeros(frames, len(emit), dtype=torch.float64, device=device)
    out.index_put_(
        (lattice.frame.to(torch.int64).to(device)[keep], torch.searchsorted(emit, arc[keep])),
        post[keep].to(torch.float64),
        accumulate=True,
    )
    return totals.to(dense.log_probs.dtype), out.to(dense.log_probs.dtype), emit


def ctc_loss(log_probs: torch.Tensor, targets: list[list[int]], lengths: torch.Tensor) -> torch.Tensor:
    """k2's own CTC loss (k2.ctc_graph + k2.ctc_loss) per utterance; ``log_probs`` [B, T, C], blank 0."""
    k2 = k2_module()
    dense, order = dense_fsa_vec(DenseFsaVec(log_probs, lengths, torch.arange(log_probs.shape[2])))
    graphs = k2.ctc_graph([targets[i] for i in order.tolist()], device=log_probs.device)
    loss = k2.ctc_loss(graphs, dense, output_beam=_ALL, reduction="none", use_double_scores=True)
    out = torch.empty_like(loss)
    out[order.to(loss.device)] = loss
    return out


def decode_pruned(
    graph: Fsa,
    dense: DenseFsaVec,
    search_beam: float = 20.0,
    output_beam: float = 8.0,
    min_active_states: int = 30,
    max_active_states: int = 10000,
):
    """Lattices of every utterance (in order) against one decoding graph, through k2.intersect_dense_pruned.

    ``graph`` is e.g. HCLG as an Fsa with its words as ``aux_label``
    (``from_kaldi(hclg, output_labels=True)``): its input epsilons are removed
    in :func:`to_k2`, since every arc of k2's intersection consumes a frame.
    """
    k2 = k2_module()
    k2_dense, _ = dense_fsa_vec(dense, sort=False)
    graphs = k2.create_fsa_vec([to_k2(graph, dense.label_to_column, dense.log_probs.device)])
    return k2.intersect_dense_pruned(
        graphs,
        k2_dense,
        search_beam=search_beam,
        output_beam=output_beam,
        min_active_states=min_active_states,
        max_active_states=max_active_states,
    )


def best_path_words(lattice) -> list[list[int]]:
    """The output labels (words, > 0) along each lattice's best path."""
    k2 = k2_module()
    best = k2.shortest_path(lattice, use_double_scores=True)
    arc_splits = best.arcs.row_splits(2).cpu()[best.arcs.row_splits(1).cpu()].tolist()
    aux = best.aux_labels
    per_arc = aux.tolist() if isinstance(aux, k2.RaggedTensor) else [[a] for a in aux.tolist()]
    return [[w for arc in per_arc[a:b] for w in arc if w > 0] for a, b in zip(arc_splits, arc_splits[1:])]
