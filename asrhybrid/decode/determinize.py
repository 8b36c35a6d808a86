"""Pruned lattice determinization: a state-level lattice to a word lattice (Kaldi's DeterminizeLatticePruned).

The input is what a decoder's search leaves: an acyclic automaton whose arcs
each consume one frame (a transition id) and may output words, with Kaldi's
two costs kept apart (graph, and acoustic already scaled by the acoustic
scale, as the search used them). The output keeps, for every word sequence
within ``beam`` of the best path, only its best path, as a
:class:`~asrhybrid.decode.lattice.WordLattice` whose arcs each carry one word,
and whose states have at most one arc per word (deterministic on words).

The construction is the subset construction of Kaldi's lattice
determinization: a state of the output is a set of input states, each with a
residual weight (graph, acoustic) and a residual string (transition ids not
yet put on an output arc), the best residual being zero. Following the
arcs without words (the epsilon closure) keeps one element per input state,
the best (the tropical semiring: only the best path of each word sequence
matters). An output arc takes the best element's weight and the common
prefix of the strings. Two sets are the same output state only when their
elements, weights and strings are all equal, so each output path spells the
frames of its input path exactly.

Pruning: the input's arcs on no path within ``beam`` of the best are dropped
first; output states are expanded best first, by the cost of their best path
through to the end (the exact cost to the end of the input lattice is known),
and those more than ``beam`` above the best path are dropped, as Kaldi's
pruned determinization does; ``max_states`` bounds the work (Kaldi's
--max-mem): past it the best paths found so far are kept and the rest cut.

The construction is compiled (determinize.cpp, the extension
``asrhybrid.decode._determinize`` that ``make setup`` builds): its strings are
nodes of a trie, so extending one by a frame costs a look-up, not a copy. This
module prepares its input as arrays and reads its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asrhybrid.decode import _determinize
from asrhybrid.decode.lattice import Arc, WordLattice


@dataclass
class StateLattice:
    """A decoder's raw lattice: ``arcs`` (src, dst, word or 0, graph cost, scaled acoustic cost, transition id),
    ``final`` state -> (graph cost, scaled acoustic cost), start state 0, acyclic."""

    num_states: int
    arcs: list[tuple[int, int, int, float, float, int]]
    final: dict[int, tuple[float, float]]


@dataclass
class LatticeArrays:
    """A :class:`StateLattice` as columns (what the compiled construction reads): per arc ``src``, ``dst``,
    ``word``, ``graph``, ``acoustic``, ``tid``; per final state ``final_state``, ``final_graph``,
    ``final_acoustic``."""

    num_states: int
    src: np.ndarray
    dst: np.ndarray
    word: np.ndarray
    graph: np.ndarray
    acoustic: np.ndarray
    tid: np.ndarray
    final_state: np.ndarray
    final_graph: np.ndarray
    final_acoustic: np.ndarray

    @classmethod
    def of(cls, lat: StateLattice) -> "LatticeArrays":
        arcs = np.array(lat.arcs, dtype=np.float64).reshape(-1, 6)
        finals = sorted(lat.final.items())
        return cls(
            lat.num_states,
            *(arcs[:, k].astype(np.int32) for k in range(3)),
            arcs[:, 3],
            arcs[:, 4],
            arcs[:, 5].astype(np.int32),
            np.array([s for s, _ in finals], dtype=np.int32),
            np.array([g for _, (g, _) in finals], dtype=np.float64),
            np.array([a for _, (_, a) in finals], dtype=np.float64),
        )

    def state_lattice(self) -> StateLattice:
        columns = (self.src, self.dst, self.word, self.graph, self.acoustic, self.tid)
        arcs = list(zip(*(c.tolist() for c in columns)))
        final = {
            s: (g, a)
            for s, g, a in zip(*(c.tolist() for c in (self.final_state, self.final_graph, self.final_acoustic)))
        }
        return StateLattice(self.num_states, arcs, final)


@dataclass
class DeterminizeStats:
    input_arcs: int
    output_states: int
    output_arcs: int
    pruned_states: int
    hit_max_states: bool


def determinize(
    lat: StateLattice | LatticeArrays, beam: float = 8.0, acoustic_scale: float = 1.0, max_states: int = 100_000
) -> tuple[WordLattice, DeterminizeStats]:
    """The word lattice of ``lat`` (see the module's doc); its acoustic costs are divided by ``acoustic_scale``
    (unscaled, as Kaldi writes lattices), its graph costs are as they were."""
    cols = lat if isinstance(lat, LatticeArrays) else LatticeArrays.of(lat)
    out = _determinize.determinize(
        cols.num_states,
        cols.src,
        cols.dst,
        cols.word,
        cols.graph,
        cols.acoustic,
        cols.tid,
        cols.final_state,
        cols.final_graph,
        cols.final_acoustic,
        float(beam),
        int(max_states),
    )
    arc_tids = _ragged(out["arc_tids"], out["arc_splits"])
    arcs = [
        Arc(s, d, w, g, a, t)
        for s, d, w, g, a, t in zip(
            out["arc_src"].tolist(),
            out["arc_dst"].tolist(),
            out["arc_word"].tolist(),
            out["arc_graph"].tolist(),
            out["arc_acoustic"].tolist(),
            arc_tids,
        )
    ]
    final_tids = _ragged(out["final_tids"], out["final_splits"])
    final = {
        s: (g, a, t)
        for s, g, a, t in zip(
            out["final_state"].tolist(), out["final_graph"].tolist(), out["final_acoustic"].tolist(), final_tids
        )
    }
    lattice = _connected(arcs, final, acoustic_scale)
    stats = DeterminizeStats(
        len(cols.src), lattice.num_states, len(lattice.arcs), int(out["pruned"]), bool(out["hit_max_states"])
    )
    return lattice, stats


def _ragged(values: np.ndarray, splits: np.ndarray) -> list[tuple[int, ...]]:
    values, splits = values.tolist(), splits.tolist()
    return [tuple(values[a:b]) for a, b in zip(splits, splits[1:])]


def _connected(arcs: list[Arc], final: dict, acoustic_scale: float) -> WordLattice:
    """The states on a path from 0 to a final state, renumbered in order of first appearance; acoustic unscaled."""
    into: dict[int, list[Arc]] = {}
    for arc in arcs:
        into.setdefault(arc.dst, []).append(arc)
    useful, stack = set(final), list(final)
    while stack:
        s = stack.pop()
        for arc in into.get(s, []):
            if arc.src not in useful:
                useful.add(arc.src)
                stack.append(arc.src)
    if 0 not in useful:
        return WordLattice([], {})
    new = {0: 0}
    kept = []
    for arc in arcs:
        if arc.src in useful and arc.dst in useful:
            for s in (arc.src, arc.dst):
                new.setdefault(s, len(new))
            kept.append(Arc(new[arc.src], new[arc.dst], arc.word, arc.graph, arc.acoustic / acoustic_scale, arc.tids))
    finals = {new[s]: (g, a / acoustic_scale, t) for s, (g, a, t) in final.items() if s in new}
    return WordLattice(kept, finals, num_states=len(new))


def lattice_arrays(
    num_states: int,
    src: np.ndarray,
    dst: np.ndarray,
    word_values: np.ndarray,
    word_splits: np.ndarray,
    graph: np.ndarray,
    acoustic: np.ndarray,
    tids: np.ndarray,
    final_arc: np.ndarray,
) -> LatticeArrays:
    """The :class:`LatticeArrays` of a decoder's arcs, each with its words (ragged: arc i's are
    ``word_values[word_splits[i]:word_splits[i + 1]]``, those <= 0 not words): arcs whose ``final_arc`` is set
    become final weights of their source (the best where several); an arc with several words becomes a chain
    of arcs, its costs and frame on the first. A final arc with words (an HLG's last word, put off until the
    end showed which word it was) becomes a chain of frameless arcs with those words into a new state that
    takes the final weight. New states are numbered from ``num_states`` in the order of their arcs."""
    word_values, word_splits = np.asarray(word_values), np.asarray(word_splits)
    n = len(src)
    positive_at = np.nonzero(word_values > 0)[0]  # the words (values <= 0 are none) and the arc of each
    owner = np.repeat(np.arange(n), np.diff(word_splits))[positive_at]
    count = np.bincount(owner, minlength=n)  # words per arc
    first = np.zeros(n, dtype=np.int64)  # each arc's first word (0: none)
    with_words, first_at = np.unique(owner, return_index=True)
    first[with_words] = word_values[positive_at[first_at]]
    final_arc = np.asarray(final_arc, dtype=bool)
    simple = ~final_arc & (count <= 1)
    order = [np.nonzero(simple)[0]]  # (original arc index) of each output arc, for the output's order
    columns = [
        (src[simple], dst[simple], first[simple], graph[simple], acoustic[simple], tids[simple]),
    ]
    finals: dict[int, tuple[float, float]] = {}
    bare = np.nonzero(final_arc & (count == 0))[0]
    for i in bare[np.argsort(graph[bare] + acoustic[bare], kind="stable")][::-1]:  # the best last: it stays
        finals[int(src[i])] = (float(graph[i]), float(acoustic[i]))
    extra, rows_out, index_out = num_states, [], []
    for i in np.nonzero(~simple & ~(final_arc & (count == 0)))[0].tolist():  # rare: several words or final words
        ws = [w for w in word_values[word_splits[i] : word_splits[i + 1]].tolist() if w > 0]
        s, d, g, a = int(src[i]), int(dst[i]), float(graph[i]), float(acoustic[i])
        if final_arc[i]:
            for w in ws:
                rows_out.append((s, extra, w, 0.0, 0.0, 0))
                index_out.append(i)
                s, extra = extra, extra + 1
            old = finals.get(s)
            if old is None or g + a < old[0] + old[1]:
                finals[s] = (g, a)
            continue
        prev = s
        for k, w in enumerate(ws):
            nxt = d if k == len(ws) - 1 else extra
            if nxt == extra:
                extra += 1
            rows_out.append((prev, nxt, w, g if k == 0 else 0.0, a if k == 0 else 0.0, int(tids[i]) if k == 0 else 0))
            index_out.append(i)
            prev = nxt
    if rows_out:
        r = list(zip(*rows_out))
        columns.append(tuple(np.array(c) for c in r))
        order.append(np.array(index_out))
    stacked = [np.concatenate([c[k] for c in columns]) for k in range(6)]
    perm = np.argsort(np.concatenate(order), kind="stable")
    src_o, dst_o, word_o, graph_o, acoustic_o, tid_o = (c[perm] for c in stacked)
    fs = sorted(finals)
    return LatticeArrays(
        extra,
        src_o.astype(np.int32),
        dst_o.astype(np.int32),
        word_o.astype(np.int32),
        graph_o.astype(np.float64),
        acoustic_o.astype(np.float64),
        tid_o.astype(np.int32),
        np.array(fs, dtype=np.int32),
        np.array([finals[s][0] for s in fs], dtype=np.float64),
        np.array([finals[s][1] for s in fs], dtype=np.float64),
    )


def arrays_to_state_lattice(
    num_states: int,
    src: np.ndarray,
    dst: np.ndarray,
    words: list[list[int]],
    graph: np.ndarray,
    acoustic: np.ndarray,
    tids: np.ndarray,
    final_arc: np.ndarray,
) -> StateLattice:
    """:func:`lattice_arrays` with each arc's words as a list, as a :class:`StateLattice`."""
    splits = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    values = np.array([w for ws in words for w in ws], dtype=np.int64)
    return lattice_arrays(num_states, src, dst, values, splits, graph, acoustic, tids, final_arc).state_lattice()
