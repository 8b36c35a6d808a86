"""FSAs as tensors, in k2's vocabulary: the graph type both engines read.

An ``Fsa`` is a list of arcs (``src``, ``dst``, ``label``, ``score``) over
states ``0..num_states-1``; state 0 is the start and the last state is the
final state, entered only by arcs labelled -1 (k2's convention: the final
weight of a Kaldi FST becomes the score of such an arc). Scores are log
probabilities (the negated Kaldi costs). Label 0 is epsilon: it consumes no
frame. A transducer (HCLG: transition ids in, words out) also has
``aux_label`` per arc (0 for none, -1 on final arcs, as k2's aux_labels).
An ``FsaVec`` concatenates several FSAs with state offsets, so one set of
tensor operations processes a whole batch.

``asrhybrid.fsa.k2_engine`` converts an ``Fsa`` to a ``k2.Fsa`` (once: the
result is cached on the Fsa), so the same graph object serves both engines.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from asrhybrid.kaldi_wrappers import kaldifst

_OPENFST_MAGIC = 2125659606


@dataclass
class Fsa:
    src: torch.Tensor  # int64 [A]
    dst: torch.Tensor  # int64 [A]
    label: torch.Tensor  # int64 [A]; 0 epsilon, -1 into the final state
    score: torch.Tensor  # float32 [A]
    num_states: int
    aux_label: torch.Tensor | None = None  # int64 [A]: output labels of a transducer (words of HCLG)
    # the k2 form, made on first use by asrhybrid.fsa.k2_engine.to_k2
    k2_cache: object = field(default=None, repr=False, compare=False)

    @property
    def num_arcs(self) -> int:
        return int(self.src.numel())

    @staticmethod
    def from_arcs(arcs: list[tuple[int, int, int, float]], num_states: int) -> "Fsa":
        """From (src, dst, label, score) tuples; the final state must be ``num_states - 1``."""
        if arcs:
            src, dst, label, score = zip(*arcs)
        else:
            src = dst = label = score = ()
        return Fsa(
            torch.tensor(src, dtype=torch.int64),
            torch.tensor(dst, dtype=torch.int64),
            torch.tensor(label, dtype=torch.int64),
            torch.tensor(score, dtype=torch.float32),
            num_states,
        )

    def to(self, device: torch.device | str) -> "Fsa":
        aux = None if self.aux_label is None else self.aux_label.to(device)
        return Fsa(
            self.src.to(device), self.dst.to(device), self.label.to(device), self.score.to(device), self.num_states, aux
        )


def from_kaldi(fst, output_labels: bool = False) -> Fsa:
    """A kaldifst StdVectorFst (input labels, tropical costs) as an Fsa.

    States are renumbered so that the start is 0 and a new super-final state
    is last; each final weight becomes an arc labelled -1 into it. Output
    labels become ``aux_label`` with ``output_labels`` (HCLG's words; -1 on
    the final arcs), else they are dropped (alignment and training need the
    input side only). The FST is read through its OpenFst binary image (an
    arc iterator in Python costs ten times more); :func:`from_kaldi_arcs` is
    the slow reference.
    """
    if fst.start < 0:
        raise ValueError("the FST has no start state")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        path = os.path.join(tmp, "g.fst")
        fst.write(path)
        image = open(path, "rb").read()
    parsed = _parse_vector_fst(image)
    if parsed is None:
        return from_kaldi_arcs(fst, output_labels)
    fsa = _renumbered(*parsed)
    return fsa if output_labels else Fsa(fsa.src, fsa.dst, fsa.label, fsa.score, fsa.num_states)


def _parse_vector_fst(image: bytes):
    """(start, final costs, arc src, dst, ilabel, olabel, cost) from a binary StdVectorFst; None for another layout."""
    (magic,) = struct.unpack_from("<i", image, 0)
    if magic != _OPENFST_MAGIC:
        return None
    pos, names = 4, []
    for _ in range(2):  # fst type, arc type
        (n,) = struct.unpack_from("<i", image, pos)
        names.append(image[pos + 4 : pos + 4 + n].decode())
        pos += 4 + n
    version, flags, _props, start, num_states, _num_arcs = struct.unpack_from("<iiQqqq", image, pos)
    if names != ["vector", "standard"] or flags != 0 or version != 2:
        return None  # symbol tables or another FST type: read arc by arc
    words = np.frombuffer(image, dtype=np.int32, offset=pos + 40)
    counts = np.empty(num_states, dtype=np.int64)
    offsets = np.empty(num_states, dtype=np.int64)
    w = 0
    for s in range(
        num_states
    ):  # per state: final cost (f32), arc count (i64), arcs (i32 ilabel, olabel, f32 cost, i32 next)
        offsets[s] = w
        counts[s] = n = int(words[w + 1])
        w += 3 + 4 * n
    finals = words[offsets].view(np.float32).astype(np.float64)
    arc_state = np.repeat(np.arange(num_states), counts)
    first = np.repeat(offsets + 3 - 4 * (np.cumsum(counts) - counts), counts) + 4 * np.arange(int(counts.sum()))
    return (
        start,
        finals,
        arc_state,
        words[first + 3].astype(np.int64),
        words[first].astype(np.int64),
        words[first + 1].astype(np.int64),
        words[first + 2].view(np.float32).astype(np.float64),
    )


def _renumbered(start, finals, src, dst, label, olabel, cost) -> Fsa:
    n = len(finals)
    new_id = np.concatenate([[start], np.delete(np.arange(n), start)]).argsort()  # old state -> new id
    final_states = np.flatnonzero(np.isfinite(finals))
    order = np.argsort(new_id[src], kind="stable")
    src, dst, label, olabel, cost = new_id[src][order], new_id[dst][order], label[order], olabel[order], cost[order]
    fsrc = new_id[final_states]
    # arcs of each state, then its final arc (as the arc iterator reading did)
    all_src = np.concatenate([src, fsrc])
    key = np.concatenate([2 * src, 2 * fsrc + 1])
    order = np.argsort(key, kind="stable")
    return Fsa(
        torch.from_numpy(all_src[order]),
        torch.from_numpy(np.concatenate([dst, np.full(len(fsrc), n)])[order]),
        torch.from_numpy(np.concatenate([label, np.full(len(fsrc), -1)])[order]),
        torch.from_numpy(-np.concatenate([cost, finals[final_states]])[order].astype(np.float32)),
        n + 1,
        torch.from_numpy(np.concatenate([olabel, np.full(len(fsrc), -1)])[order]),
    )


def from_kaldi_arcs(fst, output_labels: bool = False) -> Fsa:
    """:func:`from_kaldi` through kaldifst's arc iterator (the reference, and the path for FSTs with symbol tables)."""
    if fst.start < 0:
        raise ValueError("the FST has no start state")
    n = fst.num_states
    order = [fst.start] + [s for s in range(n) if s != fst.start]
    new_id = {s: i for i, s in enumerate(order)}
    final_state = n
    arcs: list[tuple[int, int, int, float]] = []
    olabels: list[int] = []
    for s in order:
        for arc in kaldifst.ArcIterator(fst, s):
            arcs.append((new_id[s], new_id[arc.nextstate], arc.ilabel, -arc.weight.value))
            olabels.append(arc.olabel)
        final_cost = fst.final(s).value
        if final_cost != float("inf"):
            arcs.append((new_id[s], final_state, -1, -final_cost))
            olabels.append(-1)
    fsa = Fsa.from_arcs(arcs, n + 1)
    if output_labels:
        fsa.aux_label = torch.tensor(olabels, dtype=torch.int64)
    return fsa


@dataclass
class FsaVec:
    """A batch of FSAs: their arcs concatenated, states offset, each arc tagged with its FSA."""

    src: torch.Tensor
    dst: torch.Tensor
    label: torch.Tensor
    score: torch.Tensor
    arc_fsa: torch.Tensor  # int64 [A]: which FSA each arc belongs to
    start_states: torch.Tensor  # int64 [B]
    final_states: torch.Tensor  # int64 [B]
    num_states: int

    @property
    def batch_size(self) -> int:
        return int(self.start_states.numel())

    @property
    def device(self) -> torch.device:
        return self.src.device

    @staticmethod
    def from_fsas(fsas: list[Fsa], device: torch.device | str = "cpu") -> "FsaVec":
        offsets, total = [], 0
        for f in fsas:
            offsets.append(total)
            total += f.num_states
        src = torch.cat([f.src + o for f, o in zip(fsas, offsets)])
        dst = torch.cat([f.dst + o for f, o in zip(fsas, offsets)])
        arc_fsa = torch.cat([torch.full((f.num_arcs,), i, dtype=torch.int64) for i, f in enumerate(fsas)])
        starts = torch.tensor(offsets, dtype=torch.int64)
        finals = torch.tensor([o + f.num_states - 1 for f, o in zip(fsas, offsets)], dtype=torch.int64)
        return FsaVec(
            src.to(device),
            dst.to(device),
            torch.cat([f.label for f in fsas]).to(device),
            torch.cat([f.score for f in fsas]).to(device),
            arc_fsa.to(device),
            starts.to(device),
            finals.to(device),
            total,
        )

    def state_fsa(self) -> torch.Tensor:
        """Which FSA each state belongs to."""
        bounds = torch.cat([self.start_states.cpu(), torch.tensor([self.num_states])])
        owner = torch.repeat_interleave(torch.arange(self.batch_size), bounds[1:] - bounds[:-1])
        return owner.to(self.device)


def to_kaldi(fsa: Fsa):
    """An Fsa as a kaldifst acceptor (input = output label, cost = -score; arcs into the final state become
    final weights): the inverse of :func:`from_kaldi` for acceptors, so OpenFst's algorithms can run on it."""
    fst = kaldifst.StdVectorFst()
    final_state = fsa.num_states - 1
    for _ in range(final_state):
        fst.add_state()
    fst.start = 0
    for s, d, label, score in zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist()):
        if label == -1:
            if d != final_state:
                raise ValueError(f"an arc labelled -1 from state {s} enters state {d}, not the final state")
            fst.set_final(s, -score)
        else:
            fst.add_arc(s, kaldifst.StdArc(label, label, -score, d))
    return fst


@dataclass
class BestPath:
    scores: torch.Tensor  # [B] best path score (-inf where no path)
    labels: list[list[int]]  # per utterance, the label of each frame (e.g. transition ids); [] where no path


@dataclass
class DenseFsaVec:
    """Per-utterance frame scores: ``log_probs[b, t, c]`` for t < ``lengths[b]`` (later frames are never read).

    Arc labels select columns through ``label_to_column`` (e.g. transition id
    to pdf id); label 0 (epsilon) and -1 (final) take no column.
    """

    log_probs: torch.Tensor  # [B, T, C]
    lengths: torch.Tensor  # int64 [B]
    label_to_column: torch.Tensor  # int64 [max label + 1]
