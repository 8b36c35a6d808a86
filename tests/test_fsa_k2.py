"""The k2 engine against brute force, the torch engine, Kaldi's aligner and torch's CTC; HCLG decoding through k2.

k2 is built by `make setup`, so under CI=true these run; elsewhere, without k2, they skip with a message.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_k2, require_shared
from test_fsa_intersect import LABEL_TO_COLUMN, all_paths, ctc_graph, random_fsa, yesno_training_graphs  # noqa: F401

from asrhybrid.fsa import DenseFsaVec, Fsa, arc_posteriors, from_kaldi, get_tot_scores, shortest_path, state_posteriors


@pytest.fixture(autouse=True)
def k2():
    return require_k2()


def test_k2_best_paths_equal_brute_force():
    """Random FSAs with epsilon arcs (removed for k2) and utterances of unequal lengths."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        fsas = [random_fsa(rng) for _ in range(4)]
        lengths = [3, 2, 4, 1]
        log_probs = torch.randn(4, 4, 3, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))
        dense = DenseFsaVec(log_probs, torch.tensor(lengths), LABEL_TO_COLUMN)
        best = shortest_path(fsas, dense, "k2")
        tropical = get_tot_scores(fsas, dense, log_semiring=False, engine="k2")
        for b in range(len(fsas)):
            paths = all_paths(fsas[b], log_probs[b].double().tolist(), lengths[b])
            if not paths:
                assert best.scores[b] == float("-inf") and best.labels[b] == []
                continue
            top = max(score for score, _ in paths)
            assert best.scores[b].item() == pytest.approx(top, rel=1e-5, abs=1e-5)
            assert tropical[b].item() == pytest.approx(top, rel=1e-5, abs=1e-5)
            assert any(
                labels == tuple(best.labels[b]) and score == pytest.approx(top, rel=1e-5, abs=1e-5)
                for score, labels in paths
            )
            checked += 1
    assert checked > 60


def test_k2_log_totals_equal_brute_force_without_epsilons():
    """Log-semiring totals and their gradient (occupation posteriors) through k2, on epsilon-free FSAs."""
    rng = np.random.default_rng(1)
    fsas = []
    while len(fsas) < 6:
        fsa = random_fsa(rng)
        if not bool((fsa.label == 0).any()):
            fsas.append(fsa)
    lengths = [3, 2, 4, 1, 4, 2]
    log_probs = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    dense = DenseFsaVec(log_probs, torch.tensor(lengths), LABEL_TO_COLUMN)
    totals = get_tot_scores(fsas, dense, engine="k2")
    for b, fsa in enumerate(fsas):
        scores = [s for s, _ in all_paths(fsa, log_probs[b].tolist(), lengths[b])]
        expected = torch.logsumexp(torch.tensor(scores), 0).item() if scores else float("-inf")
        assert totals[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    finite = torch.isfinite(totals)
    (grad,) = torch.autograd.grad(totals[finite].sum(), log_probs)
    torch_totals = get_tot_scores(fsas, DenseFsaVec(log_probs, torch.tensor(lengths), LABEL_TO_COLUMN), engine="torch")
    (torch_grad,) = torch.autograd.grad(torch_totals[finite].sum(), log_probs)
    np.testing.assert_allclose(grad.numpy(), torch_grad.numpy(), atol=1e-5)


def engines_agree(fsas: list[Fsa], scores: list[np.ndarray], tid_to_pdf: np.ndarray) -> dict:
    """k2 and the torch engine on the same graphs and scores: best paths, totals, posteriors, gradients."""
    lengths = [s.shape[0] for s in scores]
    log_probs = torch.zeros(len(scores), max(lengths), scores[0].shape[1])
    for b, s in enumerate(scores):
        log_probs[b, : s.shape[0]] = torch.from_numpy(s)
    log_probs.requires_grad_(True)
    dense = DenseFsaVec(log_probs, torch.tensor(lengths), torch.as_tensor(tid_to_pdf))
    out = {}
    for engine in ("k2", "torch"):
        best = shortest_path(fsas, dense, engine)
        totals = get_tot_scores(fsas, dense, engine=engine)
        (grad,) = torch.autograd.grad(totals.sum(), log_probs)
        _, posteriors, emit = arc_posteriors(fsas, dense, engine)
        out[engine] = {
            "best": best,
            "totals": totals.detach(),
            "grad": grad,
            "posteriors": posteriors,
            "emit": emit,
            "tropical": get_tot_scores(fsas, dense, log_semiring=False, engine=engine).detach(),
            "states": state_posteriors(fsas, dense, engine),
        }
    a, b = out["k2"], out["torch"]
    np.testing.assert_allclose(a["best"].scores.numpy(), b["best"].scores.numpy(), rtol=1e-4)
    np.testing.assert_allclose(a["tropical"].numpy(), b["best"].scores.numpy(), rtol=1e-4)
    np.testing.assert_allclose(a["totals"].numpy(), b["totals"].numpy(), rtol=1e-4)
    assert torch.equal(a["emit"], b["emit"])
    np.testing.assert_allclose(a["posteriors"].numpy(), b["posteriors"].numpy(), atol=1e-4)
    np.testing.assert_allclose(a["states"].numpy(), b["states"].numpy(), atol=1e-4)
    np.testing.assert_allclose(a["grad"].numpy(), b["grad"].numpy(), atol=1e-4)
    assert a["grad"].abs().sum() > 0
    return out


def test_k2_torch_and_kaldi_agree_on_real_training_graphs(yesno_training_graphs):  # noqa: F811
    """100 real yesno training graphs (with epsilons, transition probabilities) and random scores per pdf."""
    from asrhybrid.align.graphs import align_kaldi

    tid_to_pdf, graphs, scores = yesno_training_graphs
    fsas = [from_kaldi(g) for g in graphs]
    assert sum(int((f.label == 0).sum()) for f in fsas) > 0, "the graphs have input epsilons"
    out = engines_agree(fsas, scores, tid_to_pdf)
    kaldi = align_kaldi(graphs, scores, tid_to_pdf, beam=200.0, retry_beam=0.0)
    k2_best, torch_best = out["k2"]["best"], out["torch"]["best"]
    identical = 0
    for b, (kaldi_tids, kaldi_score) in enumerate(kaldi):
        assert k2_best.scores[b].item() == pytest.approx(kaldi_score, rel=1e-4)
        identical += k2_best.labels[b] == kaldi_tids == torch_best.labels[b]
    assert identical >= 98  # identical except exact ties; random float scores make ties rare


def test_align_backends_k2_torch_kaldi(yesno_training_graphs):  # noqa: F811
    from asrhybrid.align.graphs import align

    tid_to_pdf, graphs, scores = yesno_training_graphs
    results = {
        b: align(graphs[:30], scores[:30], tid_to_pdf, backend=b, device="cpu", beam=200.0, retry_beam=0.0)
        for b in ("kaldi", "k2", "torch")
    }
    for b in ("k2", "torch"):
        for (tids, score), (kaldi_tids, kaldi_score) in zip(results[b], results["kaldi"]):
            assert score == pytest.approx(kaldi_score, rel=1e-4)
        assert sum(r[0] == k[0] for r, k in zip(results[b], results["kaldi"])) >= 29
    with pytest.raises(ValueError, match="back-end"):
        align(graphs[:1], scores[:1], tid_to_pdf, backend="fsa")


def test_ctc_k2_torch_and_the_fsa_engines_agree():
    """k2.ctc_loss, torch's ctc_loss, and CTC as an FSA through either engine: values and gradients."""
    from asrhybrid.fsa.k2_engine import ctc_loss

    torch.manual_seed(0)
    targets = [[1, 1, 2], [3, 1, 4, 2], [4], [2, 3]]
    lengths = torch.tensor([12, 9, 5, 11])
    logits = torch.randn(4, 12, 5, requires_grad=True)

    def grad_of(loss):
        (g,) = torch.autograd.grad(loss.sum(), logits)
        return loss.detach().double().numpy(), g.numpy()

    reference = grad_of(
        torch.nn.functional.ctc_loss(
            logits.log_softmax(-1).transpose(0, 1),
            torch.tensor([x for t in targets for x in t]),
            lengths,
            torch.tensor([len(t) for t in targets]),
            blank=0,
            reduction="none",
        )
    )

    def dense():
        return DenseFsaVec(logits.log_softmax(-1), lengths, torch.arange(-1, 5).clamp(min=0))

    graphs = [ctc_graph(t) for t in targets]
    for value, grad in (
        grad_of(ctc_loss(logits.log_softmax(-1), targets, lengths)),
        grad_of(-get_tot_scores(graphs, dense(), engine="k2")),
        grad_of(-get_tot_scores(graphs, dense(), engine="torch")),
    ):
        np.testing.assert_allclose(value, reference[0], rtol=1e-5)
        np.testing.assert_allclose(grad, reference[1], atol=1e-5)


def test_unknown_engine_is_refused():
    fsa = Fsa.from_arcs([(0, 1, 1, 0.0), (1, 2, -1, 0.0)], 3)
    dense = DenseFsaVec(torch.zeros(1, 1, 2), torch.tensor([1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown FSA engine"):
        shortest_path([fsa], dense, "openfst")


# --- the bridge to decoding: HCLG through k2.intersect_dense_pruned ---


def decode_planted_with_k2(graph_dir, lang, tree, trans_model, sentences):
    """Planted per-frame scores (one path's transition ids at 0, the rest -20) decoded over HCLG with k2."""
    from test_graph_hclg import planted_loglikes

    from asrhybrid.fsa.fsa import from_kaldi_arcs
    from asrhybrid.fsa.k2_engine import best_path_words, decode_pruned, to_k2
    from asrhybrid.graph.mkgraph import load_hclg
    from asrhybrid.kaldi_wrappers import kaldifst
    from asrhybrid.lang.io import read_symbol_table

    words = read_symbol_table(lang / "words.txt")
    vector = kaldifst.StdVectorFst.read(str(graph_dir / "HCLG.fst"))
    hclg = from_kaldi(vector, output_labels=True)  # read through its OpenFst binary image
    assert int((hclg.label == 0).sum()) > 0, "Kaldi's HCLG has input-epsilon arcs"
    reference = from_kaldi_arcs(load_hclg(graph_dir), output_labels=True)  # the ConstFst, arc by arc
    assert torch.equal(hclg.label, reference.label) and torch.equal(hclg.aux_label, reference.aux_label)
    assert int((hclg.aux_label > 0).sum()) > 0 and bool((hclg.aux_label[hclg.label == -1] == -1).all())
    tid_to_column = torch.arange(-1, trans_model.num_transition_ids).clamp(min=0)  # planted: column tid - 1
    graph = to_k2(hclg, tid_to_column)
    # k2's form has none: every arc consumes a frame with one emitting arc of HCLG, or is final
    assert bool(((graph.arc_id >= 0) | (graph.labels == -1)).all())
    assert bool((hclg.label[graph.arc_id[graph.arc_id >= 0].long()] > 0).all())
    planted = [planted_loglikes(lang, tree, trans_model, words, s, seed=k) for k, s in enumerate(sentences)]
    lengths = [p.shape[0] for p in planted]
    log_probs = torch.full((len(planted), max(lengths), planted[0].shape[1]), -20.0)
    for b, p in enumerate(planted):
        log_probs[b, : p.shape[0]] = torch.from_numpy(p)
    # the planted matrices have one column per transition id (column tid - 1)
    dense = DenseFsaVec(log_probs, torch.tensor(lengths), tid_to_column)
    lattice = decode_pruned(hclg, dense, search_beam=20, output_beam=8, min_active_states=30, max_active_states=10000)
    inverse = {i: w for w, i in words.items()}
    return [" ".join(inverse[w] for w in ws) for ws in best_path_words(lattice)]


def test_k2_decodes_planted_utterances_over_the_yesno_hclg(tmp_path):
    from test_graph_hclg import build

    from asrhybrid.lang.prepare_lang import prepare_lang

    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    lang = prepare_lang(tutorial / "dict", tmp_path / "lang", "<SIL>", position_dependent_phones=False)
    rng = np.random.default_rng(0)
    tree, trans_model, _ = build(tmp_path, lang, [" ".join(rng.choice(["YES", "NO"], 8)) for _ in range(40)])
    sentences = ["YES NO NO YES YES NO YES NO", "YES NO YES", "NO", "NO NO NO YES YES NO YES NO YES"]
    assert decode_planted_with_k2(tmp_path / "graph", lang, tree, trans_model, sentences) == sentences


def test_k2_decodes_planted_utterances_over_a_200_word_hclg(tmp_path):
    from test_graph_hclg import build_200_word_graph

    lang, tree, trans_model, sentences = build_200_word_graph(tmp_path)
    chosen = sentences[:40:5]
    assert decode_planted_with_k2(tmp_path / "graph", lang, tree, trans_model, chosen) == chosen


# --- real network scores on synth: a small recipe run through the flat start ---

SMALL_SYNTH = """corpus: synth
sample_rate: 16000
synth: {seed: 5, num_speakers: 10, dev_speakers: 1, test_speakers: 1, train_hours: 0.08, dev_minutes: 0.3,
        test_minutes: 0.5, noise_prob: 0.3}
data: {preparer: synth}
features: {fbank: {num_mel_bins: 40}, num_jobs: 2}
lang: {lexicon: cmudict, oov: <UNK>}
lm: {small: {order: 2}, large: {order: 3}}
tokens: {model_type: bpe, vocab_size: 100}
align: {iterations: 3}
"""


@pytest.fixture(scope="module")
def small_synth_flat_start(tmp_path_factory):
    """Stages 0-4 of a 5-minute synth recipe: real training graphs and a real flat-start network."""
    from asrhybrid.recipe.runner import run_recipe

    root = tmp_path_factory.mktemp("synth_small")
    (root / "recipe").mkdir()
    (root / "recipe" / "config.yaml").write_text(SMALL_SYNTH)
    run_recipe(root / "recipe", root / "work", stage=0, stop_stage=4)
    return root / "work"


def test_engines_and_kaldi_agree_on_synth_network_scores(small_synth_flat_start):
    """Over 100 real synth training graphs (CMUdict, position-dependent phones, optional silence) with the
    flat-start network's scaled likelihoods: k2 = torch engine = Kaldi's aligner."""
    from test_recipe_yesno import real_network_scores

    from asrhybrid.align.graphs import align_kaldi

    tid_to_pdf, graphs, scores = real_network_scores(small_synth_flat_start, "train")
    assert len(graphs) >= 100
    kaldi = align_kaldi(graphs, scores, tid_to_pdf, beam=1000.0, retry_beam=0.0)
    identical = total = 0
    for start in range(0, len(graphs), 40):  # batches keep the posteriors' memory small
        chunk = slice(start, start + 40)
        out = engines_agree([from_kaldi(g) for g in graphs[chunk]], scores[chunk], tid_to_pdf)
        for b, (kaldi_tids, kaldi_score) in enumerate(kaldi[chunk]):
            assert out["k2"]["best"].scores[b].item() == pytest.approx(kaldi_score, rel=1e-4)
            identical += out["k2"]["best"].labels[b] == kaldi_tids == out["torch"]["best"].labels[b]
            total += 1
    assert identical >= total - 2  # identical except exact ties
