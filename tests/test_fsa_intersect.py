"""asrhybrid.fsa against brute force on tiny FSAs, autograd's gradcheck, and Kaldi's C++ aligner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrhybrid.fsa import DenseFsaVec, Fsa, FsaVec, from_kaldi, get_tot_scores, shortest_path
from asrhybrid.fsa.intersect import arc_posteriors, backward_totals
from conftest import require_shared

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_fsa(rng, num_states=4, num_labels=3) -> Fsa:
    """Random arcs with labels 1..num_labels, forward-only epsilons (acyclic), several final states."""
    arcs = []
    for s in range(num_states):
        for _ in range(int(rng.integers(1, 4))):
            arcs.append((s, int(rng.integers(0, num_states)), int(rng.integers(1, num_labels + 1)), float(rng.normal())))
        if s + 1 < num_states and rng.uniform() < 0.4:
            arcs.append((s, s + 1 + int(rng.integers(0, num_states - s - 1)), 0, float(rng.normal())))
        if rng.uniform() < 0.5 or s == num_states - 1:
            arcs.append((s, num_states, -1, float(rng.normal())))
    fsa = Fsa.from_arcs(arcs, num_states + 1)
    fsa.score = fsa.score.double()
    return fsa


def all_path_scores(fsa: Fsa, log_probs: list[list[float]], frames: int) -> list[float]:
    """Every path that consumes exactly ``frames`` frames, enumerated."""
    arcs = list(zip(fsa.src.tolist(), fsa.dst.tolist(), fsa.label.tolist(), fsa.score.tolist()))
    scores = []

    def walk(state, t, acc):
        for src, dst, label, score in arcs:
            if src != state:
                continue
            if label == 0:
                walk(dst, t, acc + score)
            elif label == -1:
                if t == frames:
                    scores.append(acc + score)
            elif t < frames:
                walk(dst, t + 1, acc + score + log_probs[t][label - 1])

    walk(0, 0, 0.0)
    return scores


LABEL_TO_COLUMN = torch.tensor([0, 0, 1, 2])  # labels 1..3 -> columns 0..2


@pytest.mark.parametrize("device", DEVICES)
def test_totals_and_best_paths_equal_brute_force(device):
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        fsas = [random_fsa(rng) for _ in range(3)]
        lengths = [3, 2, 4]
        log_probs = torch.randn(3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))
        dense = DenseFsaVec(log_probs.to(device), torch.tensor(lengths), LABEL_TO_COLUMN)
        vec = FsaVec.from_fsas(fsas, device)
        totals = get_tot_scores(vec, dense).cpu()
        best = shortest_path(vec, dense)
        from_backward = backward_totals(vec, dense).cpu()
        for b in range(3):
            paths = all_path_scores(fsas[b], log_probs[b].tolist(), lengths[b])
            if not paths:
                assert totals[b] == float("-inf") and best.scores[b] == float("-inf")
                continue
            expected = torch.logsumexp(torch.tensor(paths, dtype=torch.float64), 0).item()
            assert totals[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert from_backward[b].item() == pytest.approx(expected, rel=1e-9, abs=1e-9)
            assert best.scores[b].item() == pytest.approx(max(paths), rel=1e-9, abs=1e-9)
            assert len(best.labels[b]) == lengths[b]
            checked += 1
    assert checked > 40


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
    """100 real training graphs (Kaldi's compile-train-graphs + transition probs) with random frame scores."""
    from asrhybrid.graph.mkgraph import init_mono_model
    from asrhybrid.kaldi import kaldifst, khg
    from asrhybrid.lang.prepare_lang import prepare_lang
    from asrhybrid.lm.train import read_symbol_table

    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    work = tmp_path_factory.mktemp("graphs")
    lang = prepare_lang(tutorial / "dict", work / "lang", "<SIL>", position_dependent_phones=False)
    tree, trans_model = init_mono_model(lang, work / "mono")
    words = read_symbol_table(lang / "words.txt")
    disambig = [int(x) for x in (lang / "phones" / "disambig.int").read_text().split()]
    compiler = khg.TrainingGraphCompiler(
        trans_model=trans_model, ctx_dep=tree, lex_fst=kaldifst.StdVectorFst.read(str(lang / "L.fst")),
        disambig_syms=disambig, opts=khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0),
    )
    rng = np.random.default_rng(0)
    graphs, scores = [], []
    for _ in range(100):
        graph = compiler.compile_graph_from_text([words[w] for w in rng.choice(["YES", "NO"], 8)])
        # As Kaldi's align-equal-compiled / gmm-align-compiled: transition probs, self-loop scale 0.1.
        khg.add_transition_probs(trans_model=trans_model, disambig_syms=disambig, transition_scale=1.0,
                                 self_loop_scale=0.1, fst=graph)
        graphs.append(graph)
        scores.append((3 * rng.standard_normal((int(rng.integers(120, 300)), trans_model.num_transition_ids))).astype(np.float32))
    return trans_model, graphs, scores


def kaldi_align(trans_model, graph, scores):
    from asrhybrid.kaldi import khg

    result = khg.align_utterance_wrapper(
        config=khg.AlignConfig(beam=200.0, retry_beam=0.0), utt="u", acoustic_scale=1.0, fst=graph,
        decodable=khg.DecodableCtc(scores), num_done=0, num_error=0, num_retried=0, tot_like=0.0, frame_count=0,
    )
    assert result[0] == 1, "Kaldi failed to align"
    return result[3], list(result[5])


def dense_from(trans_model, scores, device="cpu") -> DenseFsaVec:
    frames = max(s.shape[0] for s in scores)
    log_probs = torch.zeros(len(scores), frames, trans_model.num_transition_ids)
    for i, s in enumerate(scores):
        log_probs[i, : s.shape[0]] = torch.from_numpy(s)
    label_to_column = torch.clamp(torch.arange(-1, trans_model.num_transition_ids), min=0)  # tid -> tid - 1
    return DenseFsaVec(log_probs.to(device), torch.tensor([s.shape[0] for s in scores]), label_to_column)


@pytest.mark.parametrize("device", DEVICES)
def test_viterbi_equals_kaldis_aligner_on_real_training_graphs(yesno_training_graphs, device):
    trans_model, graphs, scores = yesno_training_graphs
    assert sum(int((from_kaldi(g).label == 0).sum()) for g in graphs[:5]) > 0, "the graphs have epsilons"
    best = shortest_path(FsaVec.from_fsas([from_kaldi(g) for g in graphs], device), dense_from(trans_model, scores, device))
    identical = 0
    for i, (graph, s) in enumerate(zip(graphs, scores)):
        kaldi_score, kaldi_alignment = kaldi_align(trans_model, graph, s)
        assert best.scores[i].item() == pytest.approx(kaldi_score, rel=1e-4)
        identical += best.labels[i] == kaldi_alignment
    assert identical >= 98  # "identical except on exact ties"; random float scores make ties rare
