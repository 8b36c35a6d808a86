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

Pruning: output states are expanded best first, by the cost of their best
path through to the end (the exact cost to the end of the input lattice is
known), and those more than ``beam`` above the best path are dropped, as
Kaldi's pruned determinization does; ``max_states`` bounds the work (Kaldi's
--max-mem): past it the best paths found so far are kept and the rest cut.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from asrhybrid.decode.lattice import Arc, WordLattice

_QUANTUM = 1.0 / 1024  # Kaldi's delta: residual weights closer than this are one weight


@dataclass
class StateLattice:
    """A decoder's raw lattice: ``arcs`` (src, dst, word or 0, graph cost, scaled acoustic cost, transition id),
    ``final`` state -> (graph cost, scaled acoustic cost), start state 0, acyclic."""

    num_states: int
    arcs: list[tuple[int, int, int, float, float, int]]
    final: dict[int, tuple[float, float]]


@dataclass
class DeterminizeStats:
    input_arcs: int
    output_states: int
    output_arcs: int
    pruned_states: int
    hit_max_states: bool


def _topological_order(num_states: int, out: list[list]) -> list[int]:
    indegree = [0] * num_states
    for arcs in out:
        for arc in arcs:
            indegree[arc[1]] += 1
    ready, order = [s for s in range(num_states) if indegree[s] == 0], []
    while ready:
        s = ready.pop()
        order.append(s)
        for arc in out[s]:
            indegree[arc[1]] -= 1
            if indegree[arc[1]] == 0:
                ready.append(arc[1])
    if len(order) != num_states:
        raise ValueError("the lattice has a cycle (a decoder's lattices are acyclic)")
    return order


def _costs_to_end(lat: StateLattice, out: list[list], order: list[int]) -> list[float]:
    to_end = [math.inf] * lat.num_states
    for s, (g, a) in lat.final.items():
        to_end[s] = g + a
    for s in reversed(order):
        for _, dst, _, g, a, _ in out[s]:
            c = g + a + to_end[dst]
            if c < to_end[s]:
                to_end[s] = c
    return to_end


def _common_prefix(strings: list[tuple[int, ...]]) -> int:
    first = strings[0]
    n = len(first)
    for s in strings[1:]:
        n = min(n, len(s))
        for i in range(n):
            if s[i] != first[i]:
                n = i
                break
    return n


def _within_beam(num_states: int, out: list[list], order: list[int], to_end: list[float], limit: float) -> list[list]:
    """The arcs of the input that lie on a path within ``limit`` (Kaldi prunes its raw lattice so first)."""
    from_start = [math.inf] * num_states
    from_start[0] = 0.0
    for s in order:
        for _, dst, _, g, a, _ in out[s]:
            if from_start[s] + g + a < from_start[dst]:
                from_start[dst] = from_start[s] + g + a
    return [
        [arc for arc in arcs if from_start[s] + arc[3] + arc[4] + to_end[arc[1]] <= limit] for s, arcs in enumerate(out)
    ]


def _closure(elements: dict[int, tuple[float, float, tuple[int, ...]]], base: float, out, position, to_end, limit):
    """``elements`` extended along the arcs without words (in topological order), keeping each state's best
    (graph, acoustic, string); ``base``: the cost of the best path into the elements' subset."""
    heap = [(position[s], s) for s in elements]
    heapq.heapify(heap)
    done: set[int] = set()
    while heap:
        _, s = heapq.heappop(heap)
        if s in done:
            continue
        done.add(s)
        g0, a0, str0 = elements[s]
        for _, dst, word, g, a, tid in out[s]:
            if word or base + g0 + g + a0 + a + to_end[dst] > limit:
                continue
            cand = (g0 + g, a0 + a, str0 + ((tid,) if tid else ()))
            old = elements.get(dst)
            if old is None or cand[0] + cand[1] < old[0] + old[1]:
                elements[dst] = cand
                heapq.heappush(heap, (position[dst], dst))
    return elements


def _subset_key(elements) -> tuple:
    """A subset's identity: its elements with their weights quantized."""
    return tuple(
        sorted((s, round(g / _QUANTUM), round(a / _QUANTUM), string) for s, (g, a, string) in elements.items())
    )


def _normalize(elements):
    """(weight and string of the arc into the subset, the subset with residuals)."""
    best = min(elements.values(), key=lambda e: e[0] + e[1])
    strings = [e[2] for e in elements.values()]
    n = _common_prefix(strings)
    return (best[0], best[1], best[2][:n]), {
        s: (g - best[0], a - best[1], string[n:]) for s, (g, a, string) in elements.items()
    }


def determinize(
    lat: StateLattice, beam: float = 8.0, acoustic_scale: float = 1.0, max_states: int = 100_000
) -> tuple[WordLattice, DeterminizeStats]:
    """The word lattice of ``lat`` (see the module's doc); its acoustic costs are divided by ``acoustic_scale``
    (unscaled, as Kaldi writes lattices), its graph costs are as they were."""
    out: list[list] = [[] for _ in range(lat.num_states)]
    for arc in lat.arcs:
        out[arc[0]].append(arc)
    order = _topological_order(lat.num_states, out)
    position = [0] * lat.num_states
    for i, s in enumerate(order):
        position[s] = i
    to_end = _costs_to_end(lat, out, order)
    if not lat.num_states or to_end[0] == math.inf:
        return WordLattice([], {}), DeterminizeStats(len(lat.arcs), 0, 0, 0, False)
    best_total = to_end[0]
    limit = best_total + beam
    out = _within_beam(lat.num_states, out, order, to_end, limit)

    # an element: state -> (graph, acoustic, string); a subset's key: its elements, weights quantized
    def closure(elements, base):
        return _closure(elements, base, out, position, to_end, limit)

    def heuristic(elements) -> float:
        return min(g + a + to_end[s] for s, (g, a, _) in elements.items())

    start = closure({0: (0.0, 0.0, ())}, 0.0)
    ids = {_subset_key(start): 0}
    subsets = [start]
    forward = [0.0]
    queue = [(heuristic(start), 0)]
    arcs: list[Arc] = []
    final: dict[int, tuple[float, float, tuple[int, ...]]] = {}
    expanded: set[int] = set()
    pruned, hit_max = 0, False
    while queue:
        priority, sid = heapq.heappop(queue)
        if sid in expanded:
            continue
        if priority > best_total + beam:
            pruned += 1
            continue
        if len(expanded) >= max_states:
            hit_max = True
            break
        expanded.add(sid)
        elements = subsets[sid]
        finals = [
            (g + fg, a + fa, string)
            for s, (g, a, string) in elements.items()
            if (f := lat.final.get(s)) is not None
            for fg, fa in [f]
        ]
        if finals:
            best_final = min(finals, key=lambda e: e[0] + e[1])
            if forward[sid] + best_final[0] + best_final[1] <= limit:
                final[sid] = best_final
        by_word: dict[int, dict[int, tuple[float, float, tuple[int, ...]]]] = {}
        for s, (g0, a0, str0) in elements.items():
            for _, dst, word, g, a, tid in out[s]:
                if not word or forward[sid] + g0 + g + a0 + a + to_end[dst] > limit:
                    continue
                cand = (g0 + g, a0 + a, str0 + ((tid,) if tid else ()))
                nxt = by_word.setdefault(word, {})
                old = nxt.get(dst)
                if old is None or cand[0] + cand[1] < old[0] + old[1]:
                    nxt[dst] = cand
        for word, nxt in sorted(by_word.items()):
            weight, residual = _normalize(closure(nxt, forward[sid]))
            k = _subset_key(residual)
            target = ids.get(k)
            f = forward[sid] + weight[0] + weight[1]
            if target is None:
                target = ids[k] = len(subsets)
                subsets.append(residual)
                forward.append(f)
            elif f < forward[target]:
                forward[target] = f
            heapq.heappush(queue, (forward[target] + heuristic(residual), target))
            arcs.append(Arc(sid, target, word, weight[0], weight[1], weight[2]))
    lattice = _connected(arcs, final, acoustic_scale)
    return lattice, DeterminizeStats(len(lat.arcs), lattice.num_states, len(lattice.arcs), pruned, hit_max)


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


def arrays_to_state_lattice(
    num_states: int,
    src: np.ndarray,
    dst: np.ndarray,
    words: list[tuple[int, ...]],
    graph: np.ndarray,
    acoustic: np.ndarray,
    tids: np.ndarray,
    final_arc: np.ndarray,
) -> StateLattice:
    """A :class:`StateLattice` from arc arrays: arcs whose ``final_arc`` is set become final weights of their
    source; an arc with several words becomes a chain of arcs, its costs and frame on the first. A final arc
    with words (an HLG's last word, put off until the end showed which word it was) becomes a chain of
    frameless arcs with those words into a new state that takes the final weight."""
    arcs: list[tuple[int, int, int, float, float, int]] = []
    final: dict[int, tuple[float, float]] = {}
    extra = num_states
    for i in range(len(src)):
        s, d, g, a = int(src[i]), int(dst[i]), float(graph[i]), float(acoustic[i])
        ws = [w for w in words[i] if w > 0]
        if final_arc[i]:
            for w in ws:
                arcs.append((s, extra, w, 0.0, 0.0, 0))
                s, extra = extra, extra + 1
            old = final.get(s)
            if old is None or g + a < old[0] + old[1]:
                final[s] = (g, a)
            continue
        if len(ws) <= 1:
            arcs.append((s, d, ws[0] if ws else 0, g, a, int(tids[i])))
            continue
        prev = s
        for k, w in enumerate(ws):
            nxt = d if k == len(ws) - 1 else extra
            if nxt == extra:
                extra += 1
            arcs.append((prev, nxt, w, g if k == 0 else 0.0, a if k == 0 else 0.0, int(tids[i]) if k == 0 else 0))
            prev = nxt
    return StateLattice(extra, arcs, final)
