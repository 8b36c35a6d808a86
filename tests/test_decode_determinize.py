"""Pruned lattice determinization against brute force: every word sequence within the beam, once, with its best
path's cost and transition ids. Sequences beyond the beam may remain where the lattice joins two within it
(as in Kaldi's lattices), but every path there is exact too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asrhybrid.decode.determinize import (
    LatticeArrays,
    StateLattice,
    arrays_to_state_lattice,
    determinize,
    lattice_arrays,
)


def random_lattice(rng, frames: int, width: int) -> StateLattice:
    """A frame-synchronous lattice like a decoder's: states per frame, each arc one frame (a transition id), some
    arcs with a word, finals on the last frame."""
    states = [[0]] + [list(range(1 + (t - 1) * width, 1 + t * width)) for t in range(1, frames + 1)]
    arcs = []
    for t in range(frames):
        for s in states[t]:
            for d in rng.choice(states[t + 1], size=min(2, len(states[t + 1])), replace=False):
                word = int(rng.choice([0, 0, 1, 2, 3]))
                arcs.append(
                    (s, int(d), word, float(rng.uniform(0, 2)), float(rng.uniform(-1, 3)), int(rng.integers(1, 50)))
                )
    final = {s: (float(rng.uniform(0, 1)), 0.0) for s in states[-1]}
    return StateLattice(1 + frames * width, arcs, final)


def brute_force(lat: StateLattice) -> dict[tuple[int, ...], tuple[float, tuple[int, ...]]]:
    best: dict[tuple[int, ...], tuple[float, tuple[int, ...]]] = {}
    out = {}
    for arc in lat.arcs:
        out.setdefault(arc[0], []).append(arc)

    def walk(s, words, cost, tids):
        if s in lat.final:
            total = cost + sum(lat.final[s])
            if words not in best or total < best[words][0]:
                best[words] = (total, tids)
        for _, d, w, g, a, tid in out.get(s, []):
            walk(d, words + ((w,) if w else ()), cost + g + a, tids + (tid,))

    walk(0, (), 0.0, ())
    return best


def lattice_paths(lattice, acoustic_scale):
    out = lattice.out_arcs()
    paths = []

    def walk(s, words, cost, tids):
        if s in lattice.final:
            g, a, t = lattice.final[s]
            paths.append((words, cost + g + acoustic_scale * a, tids + t))
        for arc in out[s]:
            walk(arc.dst, words + (arc.word,), cost + arc.graph + acoustic_scale * arc.acoustic, tids + arc.tids)

    walk(0, (), 0.0, ())
    return paths


@pytest.mark.parametrize("seed", range(12))
def test_determinized_lattice_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    lat = random_lattice(rng, frames=int(rng.integers(3, 7)), width=int(rng.integers(2, 4)))
    truth = brute_force(lat)
    best = min(c for c, _ in truth.values())
    beam, acwt = float(rng.choice([0.5, 2.0, 100.0])), 0.1
    lattice, stats = determinize(lat, beam=beam, acoustic_scale=acwt)
    for s, arcs in enumerate(lattice.out_arcs()):  # deterministic, no epsilon arcs
        words = [a.word for a in arcs]
        assert 0 not in words and len(words) == len(set(words)), s
    paths = lattice_paths(lattice, acwt)
    assert len(paths) == len({p[0] for p in paths})  # one path per word sequence
    within = {w for w, v in truth.items() if v[0] <= best + beam}
    assert within <= {p[0] for p in paths}
    for words, cost, tids in paths:
        assert cost == pytest.approx(truth[words][0], abs=1e-6)
        assert tids == truth[words][1]
    assert stats.output_arcs == len(lattice.arcs) and not stats.hit_max_states


def test_max_states_keeps_the_best_path():
    """Output states are expanded best first, so the best path is complete before the bound cuts the rest."""
    rng = np.random.default_rng(5)
    lat = random_lattice(rng, frames=8, width=3)
    truth = brute_force(lat)
    words, (cost, tids) = min(truth.items(), key=lambda kv: kv[1][0])
    lattice, stats = determinize(lat, beam=100.0, max_states=len(words) + 2)  # the best path has len + 1 states
    assert stats.hit_max_states
    path = lattice.best_path()
    assert path.words == words and path.tids == tids and path.graph + path.acoustic == pytest.approx(cost)


def test_arcs_with_several_words_become_chains_and_finals_become_final_weights():
    lat = arrays_to_state_lattice(
        3,
        np.array([0, 1, 2]),
        np.array([1, 2, 3]),
        [[5, 6], [], [-1]],
        np.array([1.0, 2.0, 0.5]),
        np.array([0.25, 0.5, 0.0]),
        np.array([7, 8, -1]),
        np.array([False, False, True]),
    )
    assert lat.final == {2: (0.5, 0.0)}
    assert lat.arcs == [(0, 3, 5, 1.0, 0.25, 7), (3, 1, 6, 0.0, 0.0, 0), (1, 2, 0, 2.0, 0.5, 8)]
    lattice, _ = determinize(lat, beam=10.0)
    path = lattice.best_path()
    assert path.words == (5, 6) and path.tids == (7, 8) and path.graph == pytest.approx(3.5)


def test_empty_and_dead_lattices():
    assert determinize(StateLattice(0, [], {}))[0].arcs == []
    dead = StateLattice(2, [(0, 1, 3, 1.0, 1.0, 4)], {})
    assert determinize(dead)[0].best_path() is None
    assert math.isinf(min([math.inf]))


def test_columns_round_trip_and_determinize_alike():
    """A lattice as columns (what the decoder hands over) is the same lattice and determinizes the same."""
    rng = np.random.default_rng(7)
    lat = random_lattice(rng, frames=6, width=3)
    cols = LatticeArrays.of(lat)
    again = cols.state_lattice()
    assert again.num_states == lat.num_states and again.final == lat.final
    assert [a[:3] + (pytest.approx(a[3]), pytest.approx(a[4]), a[5]) for a in again.arcs] == lat.arcs
    one, _ = determinize(lat, beam=3.0, acoustic_scale=0.1)
    two, _ = determinize(cols, beam=3.0, acoustic_scale=0.1)
    assert one.arcs == two.arcs and one.final == two.final


def test_decoder_columns_with_ragged_words_equal_the_list_form():
    """lattice_arrays (ragged words, vectorized) gives the lattice arrays_to_state_lattice gives from lists,
    including arcs with several words, final arcs with and without words and several finals on one state."""
    words = [[3], [], [4, -1, 5], [0], [-1], [-1], [6, -1], [7]]
    src, dst = np.array([0, 1, 1, 2, 3, 3, 4, 2]), np.array([1, 2, 3, 3, 5, 5, 5, 4])
    graph, acoustic = np.arange(8, dtype=float), np.linspace(0.5, 2.0, 8)
    tids, final_arc = np.arange(10, 18), np.array([0, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    listed = arrays_to_state_lattice(6, src, dst, words, graph, acoustic, tids, final_arc)
    splits = np.concatenate([[0], np.cumsum([len(w) for w in words])])
    values = np.array([w for ws in words for w in ws])
    cols = lattice_arrays(6, src, dst, values, splits, graph, acoustic, tids, final_arc)
    assert cols.state_lattice() == listed
    assert listed.final[3] == (4.0, pytest.approx(acoustic[4]))  # the better of state 3's two final arcs
    assert listed.arcs[2:4] == [(1, 6, 4, 2.0, pytest.approx(acoustic[2]), 12), (6, 3, 5, 0.0, 0.0, 0)]
    assert (4, 7, 6, 0.0, 0.0, 0) in listed.arcs and listed.final[7] == (6.0, pytest.approx(acoustic[6]))


def test_bad_columns_are_refused():
    cols = LatticeArrays.of(StateLattice(2, [(0, 1, 3, 1.0, 1.0, 4)], {1: (0.0, 0.0)}))
    cols.dst = np.array([5], dtype=np.int32)
    with pytest.raises(ValueError, match="out of range"):
        determinize(cols)
    cyclic = StateLattice(2, [(0, 1, 0, 1.0, 1.0, 4), (1, 0, 0, 1.0, 1.0, 4)], {1: (0.0, 0.0)})
    with pytest.raises(ValueError, match="cycle"):
        determinize(cyclic)
