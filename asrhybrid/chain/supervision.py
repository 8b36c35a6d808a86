"""The numerator of LF-MMI per training sequence (Kaldi's chain supervision), an acceptor over pdf ids + 1, with
the pdfs its alignment allows at each frame. It is built over transition ids:

- A whole utterance: its training graph over its transcript (stage 4's graphs: every pronunciation and
  optional silence; no transition probabilities).
- A chunk of an utterance (chunk_frames > 0, Kaldi's 150-frame egs): the phones of its alignment that reach
  into the chunk, in order, each in the chain topology (its forward transition, then its self-loop), entered at
  any of those near the chunk's start (at its first frame or inside it) and left at any near its end: Kaldi
  splits the supervision at chunk edges into such paths, with initial and final weights on every state.

Either way a frame may only take pdfs of the phone instances the alignment puts within ``tolerance`` frames
of it (Kaldi's --left-tolerance/--right-tolerance); the others get a score of -1e4, which keeps the total
finite. Alignments, tolerance and frames are at the tree's frame rate.

The graph is then made as Kaldi's AddWeightToSupervisionFst makes it: its transition ids mapped to pdf ids + 1
(the denominator's labels), its weights dropped (the lexicon's and silence's: Kaldi's default lattice
lm-scale is 0), epsilons removed and determinised (one path per pdf sequence), and composed with the
denominator's normalisation FST (asrhybrid.chain.den_graph): each path then weighs what the denominator gives
it, from the same initial probabilities, so the numerator is a subset of the denominator's paths and the
objective numerator - denominator is at most 0. A sequence whose composition is empty (a phone sequence the
phone LM cannot produce) has no supervision: Kaldi drops such an example, and so does training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asrhybrid.align.graphs import GraphCompiler, phone_instances, transition_arrays
from asrhybrid.chain.den_graph import DenominatorGraph
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.fsa import Fsa, from_kaldi, to_kaldi
from asrhybrid.kaldi_tables import AlignmentTable
from asrhybrid.kaldi_wrappers import kaldifst

OUTSIDE_TOLERANCE = -1e4  # the score of a pdf the alignment does not put near a frame


@dataclass
class Supervision:
    graph: Fsa  # over pdf ids + 1
    allowed: torch.Tensor  # bool [frames, num_pdfs]
    utt: str = ""  # the utterance it supervises (named when its numerator is impossible)


class SupervisionMaker:
    """Numerators normalised by the denominator ``den`` (None: without weights, for comparison); a chunk may
    end in any of its states (Kaldi's), a whole utterance where the graph may end unless ``all_final``: as the
    denominator's recursion (asrhybrid.fsa.denominator) is set up for each."""

    def __init__(
        self,
        compiler: GraphCompiler,
        alignments: AlignmentTable,
        tolerance: int,
        den: DenominatorGraph | None = None,
        all_final: bool = False,
    ):
        self.compiler, self.alignments, self.tolerance, self.all_final = compiler, alignments, tolerance, all_final
        self.normalization = {}  # by where a sequence may end (ends_anywhere), where there is a denominator
        if den is not None:
            self.normalization = {True: den.normalization_fst(True)}
            if not all_final:  # whole utterances end where the graph does
                self.normalization[False] = den.normalization_fst(False)
        trans = compiler.trans_model
        self.tid_phone, self.tid_starts_phone = transition_arrays(trans)
        self.tid_to_pdf = np.asarray(trans.transition_id_to_pdf_array())
        self._label_of_tid = torch.as_tensor(np.concatenate([[0], self.tid_to_pdf[1:] + 1]), dtype=torch.int64)
        self.num_pdfs = trans.num_pdfs
        self._last: tuple[str, np.ndarray, list[tuple[int, int]]] | None = None  # an utterance's chunks come together
        self._self_loop = {}  # forward transition id -> its state's self-loop (the chain topology)
        for state in range(1, trans.num_transition_states + 1):
            tids = range(trans.state2id[state], trans.state2id[state + 1])
            loops = [t for t in tids if trans.is_self_loop(t)]
            for t in tids:
                if not trans.is_self_loop(t) and len(loops) == 1:
                    self._self_loop[t] = loops[0]

    def ends_anywhere(self, chunks: bool) -> bool:
        """Whether a sequence of this kind may end in any state of the denominator: a chunk always (it is cut
        from the middle of an utterance), a whole utterance with ``all_final``; the denominator's recursion
        reads the same rule, so the numerator stays a subset of it."""
        return chunks or self.all_final

    def whole(self, cut, frames: int) -> Supervision | None:
        """``cut`` whole; None where its numerator is empty after normalisation."""
        text = " ".join(s.text for s in cut.supervisions if s.text)
        graph = self._numerator(from_kaldi(self.compiler.compile(text, transition_probs=False)), chunk=False)
        if graph is None:
            return None
        tids, spans = self._alignment(cut, frames)
        return Supervision(graph, self._allowed(tids, spans, 0, frames), cut.id)

    def chunk(self, cut, first: int, frames: int) -> Supervision | None:
        """Output frames [first, first + frames) of ``cut``; None where its numerator is empty after
        normalisation."""
        tids, spans = self._alignment(cut, first + frames)
        end, tol = first + frames, self.tolerance
        near = [k for k, (b, e) in enumerate(spans) if b < end + tol and e > first - tol]
        arcs, states = [], {k: i + 1 for i, k in enumerate(near)}  # 0 the start, then one state per instance
        final = len(near) + 1
        for k in near:
            b, e = spans[k]
            forward = int(tids[b])
            loop = self._self_loop.get(forward)
            if loop is None:
                raise ConfigError(
                    "chunks of chain training need the chain topology's transitions "
                    "(asrhybrid build-tree --topology chain)"
                )
            s = states[k]
            if k - 1 in states:
                arcs.append((states[k - 1], s, forward, 0.0))
            if b <= first + tol and e > first - tol:  # the chunk may start at this instance or inside it
                arcs += [(0, s, forward, 0.0), (0, s, loop, 0.0)]
            arcs.append((s, s, loop, 0.0))
            if b < end + tol and e >= end - tol:  # or end in it
                arcs.append((s, final, -1, 0.0))
        graph = self._numerator(Fsa.from_arcs(arcs, final + 1), chunk=True)
        if graph is None:
            return None
        return Supervision(graph, self._allowed(tids, spans, first, frames), cut.id)

    def _numerator(self, graph: Fsa, chunk: bool) -> Fsa | None:
        """``graph`` (over transition ids) as an epsilon-free deterministic acceptor over pdf ids + 1 without
        weights, composed with the normalisation FST ending where a chunk or a whole utterance may
        (ends_anywhere), where there is one."""
        emitting = graph.label > 0
        label = torch.where(emitting, self._label_of_tid[graph.label.clamp(min=0)], graph.label)
        fst = to_kaldi(Fsa(graph.src, graph.dst, label, torch.zeros_like(graph.score), graph.num_states))
        kaldifst.rmepsilon(fst)
        fst = kaldifst.determinize(fst)
        normalization = self.normalization.get(self.ends_anywhere(chunk))
        if normalization is not None:
            kaldifst.arcsort(fst, sort_type="olabel")
            fst = kaldifst.StdVectorFst(kaldifst.compose(fst, normalization))  # connected: empty where no path survives
            if fst.num_states == 0:
                return None
        return from_kaldi(fst)

    def _alignment(self, cut, frames: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        if self._last is None or self._last[0] != cut.id:
            if cut.id not in self.alignments:
                raise DataError([f"{cut.id}: no alignment for its chain supervision"])
            tids = np.asarray(self.alignments[cut.id])
            spans = [(b, e) for *_, b, e in phone_instances(tids, self.tid_phone, self.tid_starts_phone)]
            self._last = (cut.id, tids, spans)
        _, tids, spans = self._last
        if len(tids) < frames:
            raise DataError([f"{cut.id}: its alignment has {len(tids)} frames, its targets {frames}"])
        return tids, spans

    def _allowed(self, tids: np.ndarray, spans, first: int, frames: int) -> torch.Tensor:
        allowed = torch.zeros(frames, self.num_pdfs, dtype=torch.bool)
        tol = self.tolerance
        for b, e in spans:
            lo, hi = max(b - tol, first), min(e + tol, first + frames)
            if lo < hi:
                allowed[lo - first : hi - first, torch.as_tensor(np.unique(self.tid_to_pdf[tids[b:e]]))] = True
        return allowed
