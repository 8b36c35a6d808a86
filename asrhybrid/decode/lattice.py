"""Word lattices as Kaldi keeps them (a CompactLattice): what decoding writes and rescoring and scoring read.

A :class:`WordLattice` is an acyclic automaton over words, start state 0. Each
arc carries a word (0: none), Kaldi's two costs kept apart as in its
LatticeWeight (``graph``: the graph's cost, that is LM + pronunciation +
transition costs, and ``acoustic``: the negated acoustic log-likelihood,
unscaled) and the transition ids of the frames it spans (the CompactLattice
string); final states carry the same triple. A path's total cost at LM
weight ``lmwt`` (Kaldi's scoring) is ``lmwt * graph + acoustic``, or, at
acoustic scale ``acwt``, ``graph + acwt * acoustic``.

On disk: Kaldi's text CompactLattice archive (``lattice-copy ark,t:``; keys
one line, then one line per arc ``src dst word graph,acoustic,t1_t2_...`` and
per final state ``state graph,acoustic,tids``, a blank line between
utterances), read and written by :func:`read_kaldi_lattices` and
:func:`write_kaldi_lattices`, so lattices made by a real Kaldi system work
with every tool here.
"""

from __future__ import annotations

import contextlib
import gzip
import heapq
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO


@dataclass
class Arc:
    src: int
    dst: int
    word: int
    graph: float
    acoustic: float
    tids: tuple[int, ...] = ()


@dataclass
class WordLattice:
    arcs: list[Arc]
    final: dict[int, tuple[float, float, tuple[int, ...]]]  # state -> (graph, acoustic, tids)
    num_states: int = 0
    _order: list[int] | None = field(default=None, repr=False)

    def __post_init__(self):
        top = max([0] + [max(a.src, a.dst) for a in self.arcs] + list(self.final))
        self.num_states = max(self.num_states, top + 1)

    def out_arcs(self) -> list[list[Arc]]:
        out: list[list[Arc]] = [[] for _ in range(self.num_states)]
        for arc in self.arcs:
            out[arc.src].append(arc)
        return out

    def topological_order(self) -> list[int]:
        """States in an order where every arc goes forward; an error for a cyclic lattice."""
        if self._order is None:
            indegree = [0] * self.num_states
            for arc in self.arcs:
                indegree[arc.dst] += 1
            out, ready, order = self.out_arcs(), [s for s in range(self.num_states) if indegree[s] == 0], []
            while ready:
                s = ready.pop()
                order.append(s)
                for arc in out[s]:
                    indegree[arc.dst] -= 1
                    if indegree[arc.dst] == 0:
                        ready.append(arc.dst)
            if len(order) != self.num_states:
                raise ValueError("the lattice has a cycle (lattices are acyclic)")
            self._order = order
        return self._order

    def best_costs_to_end(self, lmwt: float = 1.0, wip: float = 0.0) -> list[float]:
        """Per state, the least cost of reaching a final state (inf where none is reachable)."""
        to_end = [math.inf] * self.num_states
        for s, (g, a, _) in self.final.items():
            to_end[s] = lmwt * g + a
        out = self.out_arcs()
        for s in reversed(self.topological_order()):
            for arc in out[s]:
                cost = lmwt * arc.graph + arc.acoustic + (wip if arc.word else 0.0) + to_end[arc.dst]
                if cost < to_end[s]:
                    to_end[s] = cost
        return to_end

    def nbest(self, n: int, lmwt: float = 1.0, wip: float = 0.0) -> list["LatticePath"]:
        """The ``n`` best paths in cost order (A* with the exact cost to the end, so each is popped in order);
        paths with the same words are merged, the best kept: unique word sequences."""
        to_end = self.best_costs_to_end(lmwt, wip)
        out = self.out_arcs()
        heap: list = [(to_end[0], 0.0, 0, 0, ())] if self.num_states and to_end[0] < math.inf else []
        found: list[LatticePath] = []
        seen: set[tuple[int, ...]] = set()
        counter = 1
        while heap and len(found) < n:
            _, cost, state, _, arcs = heapq.heappop(heap)
            if state == -1:  # a completed path
                path = LatticePath.of(self, arcs, lmwt, wip)
                if path.words not in seen:
                    seen.add(path.words)
                    found.append(path)
                continue
            if state in self.final:
                g, a, _ = self.final[state]
                total = cost + lmwt * g + a
                heapq.heappush(heap, (total, total, -1, counter, arcs + (("final", state),)))
                counter += 1
            for k, arc in enumerate(out[state]):
                step = lmwt * arc.graph + arc.acoustic + (wip if arc.word else 0.0)
                if to_end[arc.dst] < math.inf:
                    heapq.heappush(
                        heap, (cost + step + to_end[arc.dst], cost + step, arc.dst, counter, arcs + ((state, k),))
                    )
                    counter += 1
        return found

    def best_path(self, lmwt: float = 1.0, wip: float = 0.0) -> "LatticePath | None":
        best = self.nbest(1, lmwt, wip)
        return best[0] if best else None


@dataclass
class LatticePath:
    words: tuple[int, ...]
    graph: float
    acoustic: float
    tids: tuple[int, ...]
    word_spans: tuple[tuple[int, int, int], ...]  # (word, first frame, frames) of each word arc
    steps: tuple[tuple[int, float, float, tuple[int, ...]], ...] = ()  # (word or 0; -1 final, graph, acoustic, tids)

    @classmethod
    def of(cls, lattice: WordLattice, steps, lmwt: float, wip: float) -> "LatticePath":
        out = lattice.out_arcs()
        words, tids, spans, graph, acoustic, kept = [], [], [], 0.0, 0.0, []
        for state, k in steps:
            if state == "final":
                g, a, t = lattice.final[k]
                kept.append((-1, g, a, t))
            else:
                arc = out[state][k]
                g, a, t = arc.graph, arc.acoustic, arc.tids
                kept.append((arc.word, g, a, t))
                if arc.word:
                    words.append(arc.word)
                    spans.append((arc.word, len(tids), len(t)))
            graph, acoustic = graph + g, acoustic + a
            tids.extend(t)
        return cls(tuple(words), graph, acoustic, tuple(tids), tuple(spans), tuple(kept))

    def cost(self, lmwt: float = 1.0, wip: float = 0.0) -> float:
        return lmwt * self.graph + self.acoustic + wip * len(self.words)


def paths_lattice(paths: list[LatticePath], extra_graph: list[float] | None = None) -> WordLattice:
    """A lattice that is the union of ``paths`` (each a chain from state 0, its arcs as they were), with
    ``extra_graph[i]`` added to path i's final graph cost (n-best rescoring's LM change)."""
    arcs: list[Arc] = []
    final: dict[int, tuple[float, float, tuple[int, ...]]] = {}
    next_state = 1
    for i, path in enumerate(paths):
        state = 0
        for word, g, a, t in path.steps:
            if word == -1:
                final_state = state
                if state == 0:  # an empty path: a final weight on the start state needs its own state
                    final_state = next_state
                    next_state += 1
                    arcs.append(Arc(0, final_state, 0, 0.0, 0.0))
                final[final_state] = (g + (extra_graph[i] if extra_graph else 0.0), a, t)
                continue
            arcs.append(Arc(state, next_state, word, g, a, t))
            state, next_state = next_state, next_state + 1
    return WordLattice(arcs, final, num_states=next_state)


def _weight(text: str, where: str) -> tuple[float, float, tuple[int, ...]]:
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"{where}: weight '{text}' is not graph,acoustic,transition-ids")
    try:
        tids = tuple(int(t) for t in parts[2].split("_")) if parts[2] else ()
        return float(parts[0]), float(parts[1]), tids
    except ValueError:
        raise ValueError(f"{where}: weight '{text}' is not graph,acoustic,transition-ids") from None


def _format_cost(x: float) -> str:
    return f"{x:.6g}" if math.isfinite(x) else ("Infinity" if x > 0 else "-Infinity")


@contextlib.contextmanager
def _open(path: Path, mode: str) -> Iterator[TextIO]:
    if path.suffix != ".gz":
        with open(path, mode, encoding="utf-8") as f:
            yield f
    elif mode == "r":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield f
    else:  # no file name and no time in the gzip header: the same lattices give the same bytes, whichever job,
        # engine or temporary name wrote them
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with io.TextIOWrapper(gz, encoding="utf-8") as f:
                yield f


def read_kaldi_lattices(path: Path | str, bad: list[str] | None = None) -> Iterator[tuple[str, WordLattice]]:
    """(key, lattice) of a Kaldi text CompactLattice archive (``.gz`` too), one at a time; errors name the line.

    With ``bad`` (a list), a lattice with a bad line is skipped and the error appended there, and the
    archive goes on from the next lattice: a corrupt lattice loses itself only."""
    path = Path(path)
    with _open(path, "r") as f:
        key, arcs, final, broken = None, [], {}, False
        try:
            lines = enumerate(f, 1)
            for n, line in lines:
                fields = line.split()
                if not fields:
                    if key is not None and not broken:
                        yield key, _checked(WordLattice(arcs, final), path, key, bad)
                    key, arcs, final, broken = None, [], {}, False
                    continue
                if key is None:
                    key = line.strip()
                    continue
                if broken:
                    continue
                where = f"{path}:{n} (lattice '{key}')"
                try:
                    _read_line(fields, where, arcs, final)
                except ValueError as e:
                    message = str(e) if str(e).startswith(str(path)) else f"{where}: {e}"
                    if bad is None:
                        raise ValueError(message) from None
                    bad.append(message)
                    broken = True
        except (OSError, EOFError, UnicodeDecodeError) as e:  # a truncated .gz, a binary file
            message = f"{path}: unreadable after lattice '{key}' ({e})"
            if bad is None:
                raise ValueError(message) from None
            bad.append(message)
            return
        if key is not None and not broken:
            yield key, _checked(WordLattice(arcs, final), path, key, bad)


def _read_line(fields: list[str], where: str, arcs: list[Arc], final: dict) -> None:
    if len(fields) == 4:
        g, a, tids = _weight(fields[3], where)
        arcs.append(Arc(int(fields[0]), int(fields[1]), int(fields[2]), g, a, tids))
    elif len(fields) == 3 and "," not in fields[2]:  # an arc with weight One
        arcs.append(Arc(int(fields[0]), int(fields[1]), int(fields[2]), 0.0, 0.0))
    elif len(fields) == 2:
        final[int(fields[0])] = _weight(fields[1], where)
    elif len(fields) == 1:
        final[int(fields[0])] = (0.0, 0.0, ())
    else:
        raise ValueError(f"{where}: not an arc (src dst word weight) nor a final state")


def _checked(lattice: WordLattice, path: Path, key: str, bad: list[str] | None) -> WordLattice:
    try:
        lattice.topological_order()
    except ValueError as e:
        if bad is None:
            raise ValueError(f"{path}: lattice '{key}': {e}") from None
        bad.append(f"{path}: lattice '{key}': {e}")
        return WordLattice([], {})
    return lattice


def write_kaldi_lattices(path: Path | str, lattices: Iterable[tuple[str, WordLattice]]) -> int:
    """A Kaldi text CompactLattice archive (what ``lattice-copy ark,t:`` writes); returns the count."""
    path, count = Path(path), 0
    with _open(path, "w") as f:
        for key, lattice in lattices:
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"lattice key '{key}': Kaldi keys are non-empty and have no spaces")
            f.write(f"{key}\n")
            for arc in sorted(lattice.arcs, key=lambda a: a.src):
                f.write(
                    f"{arc.src}\t{arc.dst}\t{arc.word}\t{_format_cost(arc.graph)},{_format_cost(arc.acoustic)},"
                    f"{'_'.join(map(str, arc.tids))}\n"
                )
            for state, (g, a, tids) in sorted(lattice.final.items()):
                f.write(f"{state}\t{_format_cost(g)},{_format_cost(a)},{'_'.join(map(str, tids))}\n")
            f.write("\n")
            count += 1
    return count
