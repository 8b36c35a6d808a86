"""The torch FSA engine (asrhybrid.fsa.intersect) against brute force on tiny FSAs, autograd's gradcheck, and Kaldi's C++ aligner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import require_shared

from asrhybrid.fsa import DenseFsaVec, Fsa, FsaVec, from_kaldi, state_posteriors
from asrhybrid.fsa.intersect import arc_posteriors, backward_totals, get_tot_scores, shortest_path

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_fsa(rng, num_states=4, num_labels=3) -> Fsa:
    """Random arcs with labels 1..num_labels, forward-only epsilons (acyclic), several final states."""
    arcs = []
    for s in range(num_states):
        for _ in range(int(rng.integers(1, 4))):
            arcs.append(
                (s, int(rng.integers(0, num_states)), int(rng.integers(1, num_labels + 1)), float(rng.normal()))
            )
        if s + 1 < num_states and rng.uniform() < 0.4:
            arcs.append((s, s + 1 + int(rng.integers(0, num_states - s - 1)), 0, float(rng.normal())))
        if rng.uniform() < 0.5 or s == num_states - 1:
            arcs.append((s, num_states, -1, float(rng.normal())))
    fsa = Fsa.from_arcs(arcs, num_states + 1)
    fsa.score = fsa.score.double()
    return fsa


def all_paths(fsa: Fsa, log_probs: list[list[float]], frames: int) -> list[tuple[float, tuple[int, ...]]]:
    """(score, frame labels) of every path that consumes exactly ``frames`` frames, enumerated."""
    arcs = list(zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist()))
    paths = []

    def walk(state, t, acc, labels):
        for src, dst, label, score in arcs:
            if src != state:
                continue
            if label == 0:
                walk(dst, t, acc + score, labels)
            elif label == -1:
                if t == frames:
                    paths.append((acc + score, labels))
            elif t < frames:
                walk(dst, t + 1, acc + score + log_probs[t][label - 1], labels + (label,))

    walk(0, 0, 0.0, ())
    return paths


def all_path_scores(fsa: Fsa, log_probs: list[list[float]], frames: int) -> list[float]:
    return [score for score, _ in all_paths(fsa, log_probs, frames)]


LABEL_TO_COLUMN = torch.tensor([0, 0, 1, 2])  # labels 1..3 -> columns 0..2


@pytest.mark.parametrize("device", DEVICES)
def test_totals_and_best_paths_equal_brute_force(device):
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        fsas = [random_fsa(rng) for _ in range(4)]
        lengths = [3, 2, 4, 1]
        log_probs = torch.randn(
            4, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))
        )
        dense = DenseFsaVec(log_probs.to(device), torch.tensor(lengths), LABEL_TO_COLUMN)
        vec = FsaVec.from_fsas(fsas, device)
        totals = get_tot_scores(vec, dense).cpu()
        best = shortest_path(vec, dense)
        from_backward = backward_totals(vec, dense).cpu()
        for b in range(len(fsas)):
            paths = all_paths(fsas[b], log_probs[b].tolist(), lengths[b])
            if not paths:
                assert totals[b] == float("-inf") and best.scores[b] == float("-inf") and best.labels[b] == []
                continue
            scores = [score for score, _ in paths]
            expected = torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0).item()
            assert totals[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert from_backward[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert best.scores[b].item() == pytest.approx(max(scores), rel=1e-9, abs=1e-9)
            # the labels read back are those of a path with the best score
            assert any(
                labels == tuple(best.labels[b]) and score == pytest.approx(max(scores), rel=1e-9)
                for score, labels in paths
            )
            checked += 1
    assert checked > 60


def test_epsilon_chains_and_unequal_lengths():
    """Epsilon paths several arcs deep inside a frame, and utterances that end while others run on."""
    # 0 -a-> 1 -eps-> 2 -eps-> 3 -eps-> 4 -b-> 5 -> final; and a direct 1 -b-> 5 that is worse
    fsa = Fsa.from_arcs(
        [
            (0, 1, 1, 0.0),
            (1, 2, 0, -0.1),
            (2, 3, 0, -0.1),
            (3, 4, 0, -0.1),
            (4, 5, 2, 0.0),
            (1, 5, 2, -1.0),
            (5, 6, -1, 0.0),
        ],
        7,
    )
    short = Fsa.from_arcs([(0, 1, 3, 0.5), (1, 2, -1, 0.0)], 3)
    vec = FsaVec.from_fsas([short, fsa, short])
    log_probs = torch.zeros(3, 5, 3, dtype=torch.float64)
    dense = DenseFsaVec(log_probs, torch.tensor([1, 2, 1]), LABEL_TO_COLUMN)
    best = shortest_path(vec, dense)
    assert best.labels == [[3], [1, 2], [3]]
    assert best.scores.tolist() == pytest.approx([0.5, -0.3, 0.5])
    assert get_tot_scores(vec, dense)[1].item() == pytest.approx(math.log(math.exp(-0.3) + math.exp(-1.0)))


def test_posteriors_sum_to_one_per_frame():
    rng = np.random.default_rng(3)
    fsas = [random_fsa(rng, num_states=5) for _ in range(4)]
    vec = FsaVec.from_fsas(fsas)
    dense = DenseFsaVec(torch.randn(4, 6, 3, dtype=torch.float64), torch.tensor([6, 5, 4, 6]), LABEL_TO_COLUMN)
    totals, post, emit = arc_posteriors(vec, dense)
    utt = vec.arc_fsa[emit]
    for b in range(4):
        if math.isinf(totals[b]):
            continue
        per_frame = post[:, utt == b].sum(1)
        length = int(dense.lengths[b])
        np.testing.assert_allclose(per_frame[:length].numpy(), 1.0, atol=1e-9)
        assert per_frame[length:].abs().sum().item() == 0.0
    occupation = state_posteriors(fsas, dense, "torch")
    owner = vec.state_fsa()
    for b in range(4):
        if not math.isinf(totals[b]):
            length = int(dense.lengths[b])
            np.testing.assert_allclose(occupation[:length, owner == b].sum(1).numpy(), 1.0, atol=1e-9)


def test_gradient_is_posteriors_gradcheck():
    rng = np.random.default_rng(5)
    fsas = [random_fsa(rng) for _ in range(2)]
    vec = FsaVec.from_fsas(fsas)
    log_probs = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([3, 2])

    def total(x):
        return get_tot_scores(vec, DenseFsaVec(x, lengths, LABEL_TO_COLUMN))

    assert torch.isfinite(total(log_probs)).all()
    assert torch.autograd.gradcheck(total, (log_probs,))


def test_epsilon_cycles_are_refused():
    fsa = Fsa.from_arcs([(0, 1, 0, 0.0), (1, 0, 0, 0.0), (1, 2, -1, 0.0)], 3)
    with pytest.raises(ValueError, match="epsilon cycle"):
        shortest_path(FsaVec.from_fsas([fsa]), DenseFsaVec(torch.zeros(1, 1, 1), torch.tensor([1]), torch.tensor([0])))


@pytest.fixture(scope="module")
def yesno_training_graphs(tmp_path_factory):
    """100 real training graphs (Kaldi's compile-train-graphs + transition probs) with random scores per pdf."""
    from asrhybrid.align.graphs import GraphCompiler
    from asrhybrid.hmm import init_mono_model
    from asrhybrid.lang.prepare_lang import prepare_lang

    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    work = tmp_path_factory.mktemp("graphs")
    lang = prepare_lang(tutorial / "dict", work / "lang", "<SIL>", position_dependent_phones=False)
    tree, trans_model = init_mono_model(lang, work / "mono")
    compiler = GraphCompiler(lang, tree, trans_model)
    rng = np.random.default_rng(0)
    graphs = [compiler.compile(" ".join(rng.choice(["YES", "NO"], 8))) for _ in range(100)]
    scores = [
        (3 * rng.standard_normal((int(rng.integers(120, 300)), trans_model.num_pdfs))).astype(np.float32)
        for _ in graphs
    ]
    return np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64), graphs, scores


def test_binary_reader_equals_arc_iterator(yesno_training_graphs):
    from asrhybrid.fsa.fsa import from_kaldi_arcs
    from asrhybrid.kaldi_wrappers import kaldifst

    _, graphs, _ = yesno_training_graphs
    for graph in graphs[:20]:
        fast, slow = from_kaldi(graph), from_kaldi_arcs(graph)
        assert fast.num_states == slow.num_states
        for field in ("src", "dst", "label", "score"):
            assert torch.equal(getattr(fast, field), getattr(slow, field)), field
    # an FST whose start is not state 0, with an input symbol table: read arc by arc
    fst = kaldifst.StdVectorFst()
    for _ in range(3):
        fst.add_state()
    fst.start = 2
    fst.add_arc(2, kaldifst.StdArc(4, 4, 0.25, 0))
    fst.add_arc(0, kaldifst.StdArc(5, 0, 1.5, 1))
    fst.set_final(1, 0.5)
    table = kaldifst.SymbolTable()
    table.add_symbol("<eps>", 0)
    fst.input_symbols = table
    fsa = from_kaldi(fst)
    assert list(zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist())) == [
        (0, 1, 4, -0.25),
        (1, 2, 5, -1.5),
        (2, 3, -1, -0.5),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_viterbi_equals_kaldis_aligner_on_real_training_graphs(yesno_training_graphs, device):
    from asrhybrid.align.graphs import align_fsa, align_kaldi

    tid_to_pdf, graphs, scores = yesno_training_graphs
    assert sum(int((from_kaldi(g).label == 0).sum()) for g in graphs[:5]) > 0, "the graphs have epsilons"
    kaldi = align_kaldi(graphs, scores, tid_to_pdf, beam=200.0, retry_beam=0.0)
    ours = align_fsa(graphs, scores, tid_to_pdf, device, engine="torch")
    assert all(k is not None for k in kaldi) and all(o is not None for o in ours)
    for (our_tids, our_score), (kaldi_tids, kaldi_score) in zip(ours, kaldi):
        assert our_score == pytest.approx(kaldi_score, rel=1e-4)
    identical = sum(o[0] == k[0] for o, k in zip(ours, kaldi))
    assert identical >= 98  # "identical except on exact ties"; random float scores make ties rare


def test_batches_respect_the_size_limits(yesno_training_graphs):
    """Small cell budgets split the work into more batches; the alignments do not change."""
    from asrhybrid.align.graphs import TrainingGraph, _batches, align_fsa

    tid_to_pdf, graphs, scores = yesno_training_graphs
    graphs = [TrainingGraph(g) for g in graphs]
    order = sorted(range(30), key=lambda i: -scores[i].shape[0])
    frames = [scores[i].shape[0] for i in order]
    batches = list(_batches(order, frames, 8, 20_000, graphs))
    assert [i for b in batches for i in b] == order
    for b in batches:
        assert len(b) <= 8
        longest = max(scores[i].shape[0] for i in b)
        assert len(b) == 1 or sum(graphs[i].fsa.num_states for i in b) * (longest + 1) <= 20_000
    assert len(batches) > 30 / 8
    small = align_fsa(graphs[:30], scores[:30], tid_to_pdf, batch=8, max_cells=20_000, engine="torch")
    assert small == align_fsa(graphs[:30], scores[:30], tid_to_pdf, engine="torch")


def ctc_graph(targets: list[int]) -> Fsa:
    """CTC's topology for one target sequence: blank/label states, label = token + 1 (label 0 is epsilon here)."""
    states = [0] + [x for t in targets for x in (t, 0)]  # blank, y1, blank, y2, ..., blank
    arcs = []
    for s, token in enumerate(states):
        arcs.append((s, s, token + 1, 0.0))  # stay
        if s + 1 < len(states):
            arcs.append((s, s + 1, states[s + 1] + 1, 0.0))
        if token != 0 and s + 2 < len(states) and states[s + 2] != token:
            arcs.append((s, s + 2, states[s + 2] + 1, 0.0))  # skip the blank between different tokens
    final = len(states)
    arcs += [(final - 1, final, -1, 0.0), (final - 2, final, -1, 0.0)]
    # entering: the first frame may be blank or the first token; a super-initial state does that
    shifted = [(s + 1, d + 1, label, score) for s, d, label, score in arcs]
    start = [(0, 1, 1, 0.0), (0, 2, states[1] + 1, 0.0)]
    fsa = Fsa.from_arcs(start + shifted, final + 2)
    fsa.score = fsa.score.double()
    return fsa


@pytest.mark.parametrize("device", DEVICES)
def test_ctc_through_the_fsa_engine_equals_torch_ctc_loss(device):
    """An FSA loss trains a network: CTC as an FsaVec gives torch's ctc_loss and its gradient."""
    torch.manual_seed(0)
    targets = [[1, 1, 2], [3, 1, 4, 2], [4]]
    lengths = torch.tensor([12, 9, 5])
    logits = torch.randn(3, 12, 5, dtype=torch.float64, requires_grad=True)
    log_probs = logits.log_softmax(-1)
    vec = FsaVec.from_fsas([ctc_graph(t) for t in targets], device)
    dense = DenseFsaVec(log_probs.to(device), lengths, torch.arange(-1, 5).clamp(min=0))
    ours = -get_tot_scores(vec, dense).cpu()
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)

    reference = torch.nn.functional.ctc_loss(
        logits.log_softmax(-1).transpose(0, 1),
        torch.tensor([x for t in targets for x in t]),
        lengths,
        torch.tensor([len(t) for t in targets]),
        blank=0,
        reduction="none",
    )
    (grad_ref,) = torch.autograd.grad(reference.sum(), logits)
    np.testing.assert_allclose(ours.detach().numpy(), reference.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(grad_ours.numpy(), grad_ref.numpy(), atol=1e-9)


def test_utterances_lost_by_kaldis_beam_are_aligned_exactly(yesno_training_graphs):
    """Barely enough frames and a tiny beam: Kaldi's aligner fails; align() hands those to the FSA Viterbi."""
    from asrhybrid.align.graphs import align, align_fsa, align_kaldi

    tid_to_pdf, graphs, _ = yesno_training_graphs
    rng = np.random.default_rng(7)
    scores = [(3 * rng.standard_normal((27, int(tid_to_pdf.max()) + 1))).astype(np.float32) for _ in graphs[:10]]
    assert sum(r is None for r in align_kaldi(graphs[:10], scores, tid_to_pdf, beam=0.5, retry_beam=0.0)) >= 5
    results = align(graphs[:10], scores, tid_to_pdf, backend="kaldi", device="cpu", beam=0.5, retry_beam=0.0)
    assert all(r is not None for r in results)
    # the exact best path from an independent implementation: k2's Viterbi
    from conftest import require_k2

    require_k2()
    exact = align_fsa(graphs[:10], scores, tid_to_pdf, engine="k2")
    assert [r[0] for r in results] == [e[0] for e in exact]
    np.testing.assert_allclose([r[1] for r in results], [e[1] for e in exact], rtol=1e-5)


def test_frames_past_the_lengths_are_never_read():
    """NaN beyond each utterance's length (the shortest first in the batch) changes nothing."""
    rng = np.random.default_rng(11)
    fsas = [random_fsa(rng, num_states=5) for _ in range(3)]
    lengths = torch.tensor([2, 5, 3])
    clean = torch.randn(3, 5, 3, dtype=torch.float64)
    dirty = clean.clone()
    for b, n in enumerate(lengths.tolist()):
        dirty[b, n:] = float("nan")
    vec = FsaVec.from_fsas(fsas)
    a, b = DenseFsaVec(clean, lengths, LABEL_TO_COLUMN), DenseFsaVec(dirty, lengths, LABEL_TO_COLUMN)
    assert torch.equal(shortest_path(vec, a).scores, shortest_path(vec, b).scores)
    assert shortest_path(vec, a).labels == shortest_path(vec, b).labels
    assert torch.equal(get_tot_scores(vec, a), get_tot_scores(vec, b))
    torch.testing.assert_close(arc_posteriors(vec, a)[1], arc_posteriors(vec, b)[1], rtol=0, atol=0)


def test_labels_past_the_score_columns_are_refused():
    """A label without a column, or a column past log_probs, is an error, never a silent out-of-bounds read."""
    fsa = Fsa.from_arcs([(0, 1, 3, 0.0), (1, 2, -1, 0.0)], 3)
    vec = FsaVec.from_fsas([fsa])
    with pytest.raises(ValueError, match="label 3 has no score column"):
        shortest_path(vec, DenseFsaVec(torch.zeros(1, 1, 3), torch.tensor([1]), torch.tensor([0, 0, 1])))
    with pytest.raises(ValueError, match="column 5, past the 3 columns"):
        get_tot_scores(vec, DenseFsaVec(torch.zeros(1, 1, 3), torch.tensor([1]), torch.tensor([0, 0, 1, 5])))
