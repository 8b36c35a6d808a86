"""asrhybrid.decode.lattice: Kaldi text CompactLattices (a real one, from theanolm's tests), n-best against brute force."""

from __future__ import annotations

import random

import pytest
from conftest import require_shared

from asrhybrid.decode.lattice import Arc, WordLattice, read_kaldi_lattices, write_kaldi_lattices


def test_reads_a_kaldi_compact_lattice():
    """theanolm's lattice (its test's expectations): 24 nodes and 39 links once its reader adds one end node
    linked from each final state; 4 wordless arcs from the start; 'but' costs 51.14 graph, 965.47 acoustic."""
    words = dict(
        line.split()[::-1]
        for line in require_shared("testdata", "kaldi_formats", "theanolm_words.txt").read_text().splitlines()
    )
    [(key, lattice)] = list(read_kaldi_lattices(require_shared("testdata", "kaldi_formats", "theanolm_lattice.lat")))
    assert key == "utterance 123"
    assert (lattice.num_states + 1, len(lattice.arcs) + len(lattice.final)) == (24, 39)
    assert lattice.final == {21: (13.83, 4651.0, ()), 22: (13.83, 4651.0, ())}
    out = lattice.out_arcs()
    assert len(out[0]) == 4 and all(a.word == 0 for a in out[0])
    but = [a for a in lattice.arcs if words[str(a.word)] == "but"]
    assert [(a.graph, a.acoustic) for a in but] == [(51.14, 965.47)]


def test_kaldi_text_round_trip(tmp_path):
    lattices = [("utt1", random_lattice(random.Random(k))) for k in range(5)]
    for name in ("lat.1", "lat.1.gz"):
        assert write_kaldi_lattices(tmp_path / name, lattices) == 5
        back = list(read_kaldi_lattices(tmp_path / name))
        assert [k for k, _ in back] == [k for k, _ in lattices]
        for (_, a), (_, b) in zip(lattices, back):
            key = lambda arc: (arc.src, arc.dst, arc.word, round(arc.graph, 4), round(arc.acoustic, 4), arc.tids)
            assert sorted(map(key, a.arcs)) == sorted(map(key, b.arcs))
            assert {s: (round(g, 4), round(x, 4), t) for s, (g, x, t) in a.final.items()} == {
                s: (round(g, 4), round(x, 4), t) for s, (g, x, t) in b.final.items()
            }
    with pytest.raises(ValueError, match="no spaces"):
        write_kaldi_lattices(tmp_path / "bad", [("a b", lattices[0][1])])


def test_a_bad_line_names_the_file_line_and_lattice(tmp_path):
    (tmp_path / "bad.lat").write_text("utt7\n0 1 3 1.0,2.0,1_2\n1 2 4 x,y\n\n")
    with pytest.raises(ValueError, match=r"bad.lat:3 \(lattice 'utt7'\)"):
        list(read_kaldi_lattices(tmp_path / "bad.lat"))


def random_lattice(rng: random.Random, states: int = 6) -> WordLattice:
    arcs = []
    for s in range(states - 1):
        for d in rng.sample(range(s + 1, states), k=min(2, states - 1 - s)):
            arcs.append(
                Arc(
                    s,
                    d,
                    rng.choice([0, 1, 2, 3]),
                    round(rng.uniform(0, 5), 3),
                    round(rng.uniform(0, 20), 3),
                    tuple(rng.randint(1, 9) for _ in range(rng.randint(0, 3))),
                )
            )
    final = {states - 1: (round(rng.uniform(0, 2), 3), 0.0, ()), states - 2: (1.5, 0.5, (4,))}
    return WordLattice(arcs, final)


def all_paths(lattice: WordLattice):
    out = lattice.out_arcs()

    def walk(state, arcs):
        if state in lattice.final:
            yield arcs, lattice.final[state]
        for arc in out[state]:
            yield from walk(arc.dst, arcs + [arc])

    yield from walk(0, [])


@pytest.mark.parametrize("seed", range(20))
def test_nbest_equals_brute_force(seed):
    """Unique word sequences in cost order, each with its best path's cost, at an LM weight and insertion penalty."""
    lattice = random_lattice(random.Random(seed), states=7)
    lmwt, wip = 1.7, 0.5
    best = {}
    for arcs, (g, a, _) in all_paths(lattice):
        words = tuple(x.word for x in arcs if x.word)
        cost = lmwt * (sum(x.graph for x in arcs) + g) + sum(x.acoustic for x in arcs) + a + wip * len(words)
        best[words] = min(best.get(words, float("inf")), cost)
    expected = sorted(best.items(), key=lambda kv: kv[1])
    nbest = lattice.nbest(100, lmwt, wip)
    assert [p.words for p in nbest] == [w for w, _ in expected]
    assert [p.cost(lmwt, wip) for p in nbest] == pytest.approx([c for _, c in expected])
    assert lattice.best_path(lmwt, wip).words == expected[0][0]
