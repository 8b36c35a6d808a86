"""Senone trees: planted statistics split on the planted context; Kaldi's binary format; loaded as a ContextDependency."""

from __future__ import annotations

import numpy as np
import pytest

from asrhybrid.tree.build import (
    CENTER,
    LEFT,
    Leaf,
    Split,
    build_tree,
    context_questions,
    kaldi_tree_bytes,
    load_context_dependency,
)


def planted_stats(rng, dim=4, frames=400):
    """Phone 2's state 0 sounds different after phone 3 than after phone 4; its right context is noise."""
    stats = {}
    for left in (3, 4):
        for right in (1, 3, 4):
            x = rng.normal(2.0 if left == 3 else -2.0, 1.0, size=(frames, dim))
            stats[(left, 2, right, 0)] = np.concatenate([[frames], x.sum(0), (x**2).sum(0)])
    for phone in (1, 3, 4):
        x = rng.normal(0.0, 1.0, size=(frames, dim))
        stats[(0, phone, 0, 0)] = np.concatenate([[frames], x.sum(0), (x**2).sum(0)])
    return stats


QUESTIONS = [frozenset({1}), frozenset({3}), frozenset({4}), frozenset({3, 4}), frozenset({0, 1})]


def test_tree_splits_on_the_planted_context():
    tree = build_tree(
        planted_stats(np.random.default_rng(0)),
        {1: 1, 2: 1, 3: 1, 4: 1},
        QUESTIONS,
        context_independent={1},
        num_leaves=5,
        min_count=50,
    )
    root = tree.node_for(2, 0)
    assert isinstance(root, Split) and root.key == LEFT
    assert (3 in root.yes_set) != (4 in root.yes_set)
    assert len(tree.leaves()) == 5
    assert tree.pdf(3, 2, 1, 0) != tree.pdf(4, 2, 1, 0)
    assert tree.pdf(3, 2, 1, 0) == tree.pdf(3, 2, 4, 0)  # the right context carries nothing


def test_no_split_without_enough_frames_or_gain():
    tree = build_tree(
        planted_stats(np.random.default_rng(1)),
        {1: 1, 2: 1, 3: 1, 4: 1},
        QUESTIONS,
        context_independent={1},
        num_leaves=50,
        min_count=10_000,
    )
    assert all(isinstance(n, Leaf) for n in tree.roots.values())


def test_encoder_writes_kaldis_bytes_for_a_monophone_tree(tmp_path):
    """Our writer against Kaldi's own ContextDependency::Write of the same (monophone) tree."""
    from asrhybrid.kaldi_wrappers import khg

    topo_text = """<Topology>
<TopologyEntry>
<ForPhones>
2 3
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>
<State> 3 </State>
</TopologyEntry>
<TopologyEntry>
<ForPhones>
1
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.5 <Transition> 1 0.5 </State>
<State> 1 </State>
</TopologyEntry>
</Topology>
"""
    topo = khg.HmmTopology()
    topo.read(topo_text)
    kaldi_tree = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes()
    )
    kaldi_tree.write(True, str(tmp_path / "tree"))
    kaldi_bytes = (tmp_path / "tree").read_bytes()[2:]  # without the "\0B" binary-mode header
    ours = build_tree({}, {p: topo.num_pdf_classes(p) for p in topo.phones}, [], set(), num_leaves=100)
    assert kaldi_tree_bytes(ours, context_width=1, central_position=0) == kaldi_bytes


def test_encoder_writes_kaldis_bytes_for_a_triphone_tree_with_splits(tmp_path):
    """A tree with split nodes (SE, TE, CE): Kaldi's ContextDependency reads our bytes and writes them back unchanged."""
    tree = build_tree(
        planted_stats(np.random.default_rng(2)),
        {1: 1, 2: 1, 3: 1, 4: 1},
        QUESTIONS,
        context_independent={1},
        num_leaves=6,
        min_count=50,
    )
    ours = kaldi_tree_bytes(tree)
    assert b"SE" in ours and b"TE" in ours and b"CE" in ours
    load_context_dependency(ours).write(True, str(tmp_path / "tree"))
    assert (tmp_path / "tree").read_bytes()[2:] == ours  # without the "\0B" binary-mode header


def test_loaded_triphone_tree_computes_our_pdfs():
    tree = build_tree(
        planted_stats(np.random.default_rng(2)),
        {1: 1, 2: 1, 3: 1, 4: 1},
        QUESTIONS,
        context_independent={1},
        num_leaves=6,
        min_count=50,
    )
    ctx_dep = load_context_dependency(kaldi_tree_bytes(tree))
    assert (ctx_dep.context_width, ctx_dep.central_position, ctx_dep.num_pdfs) == (3, 1, len(tree.leaves()))
    for left in (0, 1, 3, 4):
        for phone in (1, 2, 3, 4):
            for right in (0, 1, 3, 4):
                ok, pdf = ctx_dep.compute([left, phone, right], 0)
                assert ok and pdf == tree.pdf(left, phone, right, 0)


def test_questions_group_arpabet_classes():
    ids = {"<eps>": 0, "SIL": 1, "AH1_B": 2, "AH0_E": 3, "B_B": 4, "P_E": 5, "M_S": 6, "#0": 7}
    questions = context_questions(ids, {"SIL"})
    assert frozenset({2, 3}) in questions  # AH in every stress and position
    assert frozenset({4, 5}) in questions  # stops
    assert frozenset({4, 5, 6}) in questions  # labials
    assert frozenset({2, 4}) in questions  # word-initial (_B)
    assert all(7 not in q for q in questions)


def test_shared_root_pools_variants_and_splits_on_the_central_phone():
    """Phones 2 and 5 share a root (as stress/position variants do): they split apart only if they differ."""
    rng = np.random.default_rng(4)
    stats = {}
    for phone, centre in ((2, 3.0), (5, -3.0)):
        for left in (1, 3):
            x = rng.normal(centre, 1.0, size=(300, 4))
            stats[(left, phone, 1, 0)] = np.concatenate([[300], x.sum(0), (x**2).sum(0)])
    questions = QUESTIONS + [frozenset({2}), frozenset({5})]
    tree = build_tree(
        stats,
        {1: 1, 2: 1, 3: 1, 5: 1},
        questions,
        context_independent={1},
        num_leaves=10,
        min_count=50,
        root_sets=[[1], [2, 5], [3]],
    )
    shared = tree.roots[(1, 0)]
    assert isinstance(shared, Split) and shared.key == CENTER
    assert tree.pdf(1, 2, 1, 0) != tree.pdf(1, 5, 1, 0)
    ctx_dep = load_context_dependency(kaldi_tree_bytes(tree))
    for phone in (2, 5):
        for left in (1, 3):
            assert ctx_dep.compute([left, phone, 1], 0) == (True, tree.pdf(left, phone, 1, 0))


def gaussian_stats(rng, mean, frames=300, dim=3):
    x = rng.normal(mean, 1.0, size=(frames, dim))
    return np.concatenate([[frames], x.sum(0), (x**2).sum(0)])


def test_phone_clustering_finds_the_planted_groups():
    """Root sets {1,2} {3} {4,5} {6} {7} {8}: the first three sound alike (mean +3), the rest alike (mean -3)."""
    from asrhybrid.tree.build import cluster_phone_questions

    rng = np.random.default_rng(0)
    root_sets = [[1, 2], [3], [4, 5], [6], [7], [8]]
    group = {1: 3.0, 3: 3.0, 4: 3.0, 6: -3.0, 7: -3.0, 8: -3.0}
    stats = {}
    for r in root_sets:
        for c in range(3):  # statistics of a root set's first phone (state c shifts the mean a little)
            stats[(0, r[0], 0, c)] = gaussian_stats(rng, group[r[0]] + 0.3 * c)
    questions = cluster_phone_questions(stats, root_sets)
    assert frozenset(range(1, 9)) in questions  # the whole inventory
    assert frozenset({1, 2, 3, 4, 5}) in questions and frozenset({6, 7, 8}) in questions
    assert all(frozenset(r) in questions for r in root_sets)  # down to single root sets
    assert len(questions) == 2 * len(root_sets) - 1  # a binary tree over the six sets


def test_auto_questions_let_a_tree_split_on_a_class_of_any_phone_set():
    """Phones without ARPAbet names: the clustered class {a, b} is the context that matters."""
    from asrhybrid.tree.build import make_questions

    rng = np.random.default_rng(1)
    phone_ids = {"<eps>": 0, "SIL": 1, "a": 2, "b": 3, "c": 4, "d": 5, "x": 6}
    root_sets = [[1], [2], [3], [4], [5], [6]]
    stats = {}
    for p, mean in ((2, 4.0), (3, 4.2), (4, -4.0), (5, -4.2), (1, 0.0)):
        stats[(0, p, 0, 0)] = gaussian_stats(rng, mean)
    for left in (2, 3, 4, 5):  # x sounds different after a/b than after c/d
        stats[(left, 6, 0, 0)] = gaussian_stats(rng, 1.5 if left in (2, 3) else -1.5)
    questions = make_questions("auto", phone_ids, {"SIL"}, stats, root_sets)
    assert frozenset({2, 3}) in questions and frozenset({4, 5}) in questions
    tree = build_tree(
        stats,
        {p: 1 for p in range(1, 7)},
        questions,
        context_independent={1},
        num_leaves=7,
        min_count=50,
        root_sets=root_sets,
    )
    root = tree.node_for(6, 0)
    assert isinstance(root, Split) and root.key == LEFT and root.yes_set in (frozenset({2, 3}), frozenset({4, 5}))
    assert tree.pdf(2, 6, 0, 0) == tree.pdf(3, 6, 0, 0) != tree.pdf(4, 6, 0, 0)
    arpabet = make_questions("arpabet", phone_ids, {"SIL"}, stats, root_sets)
    assert frozenset({2, 3}) not in arpabet  # ARPAbet classes know nothing of these phones
    with pytest.raises(ValueError, match="auto, arpabet or both"):
        make_questions("kmeans", phone_ids, {"SIL"}, stats, root_sets)


def test_target_below_the_roots_ties_the_closest_states_of_one_phone():
    """Phone 2's states 1 and 2 sound alike, state 0 does not: 4 leaves from 5 (root, state) pairs tie 1 and 2 (never
    a state of phone 1 with one of phone 2); Kaldi's ContextDependency computes the tied pdfs."""
    rng = np.random.default_rng(3)

    def gauss(mean):
        x = rng.normal(mean, 1.0, size=(300, 4))
        return np.concatenate([[300], x.sum(0), (x**2).sum(0)])

    stats = {
        (0, 1, 0, 0): gauss(0.0),
        (0, 1, 0, 1): gauss(2.5),
        (0, 2, 0, 0): gauss(-3.0),
        (0, 2, 0, 1): gauss(1.0),
        (0, 2, 0, 2): gauss(1.05),
    }
    tree = build_tree(stats, {1: 2, 2: 3}, [], context_independent={1, 2}, num_leaves=4)
    pdfs = [tree.pdf(0, 2, 0, c) for c in range(3)]
    assert pdfs[1] == pdfs[2] != pdfs[0]
    assert len({tree.pdf(0, 1, 0, c) for c in range(2)} | set(pdfs)) == 4
    assert tree.classes_of_pdf()[(2, pdfs[1])] == [1, 2]
    ctx_dep = load_context_dependency(kaldi_tree_bytes(tree))
    assert ctx_dep.num_pdfs == 4 and ctx_dep.compute([0, 2, 0], 2) == (True, pdfs[1])
    with pytest.raises(ValueError, match="different root sets"):
        build_tree(stats, {1: 2, 2: 3}, [], context_independent={1, 2}, num_leaves=1)
