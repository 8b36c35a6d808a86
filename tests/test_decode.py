"""Stage 8 on a real HCLG (Kaldi's yesno lexicon, a bigram LM): k2 lattice decoding against Kaldi's decoder on planted
scores, word lattices against the 1-best, bad input per utterance, LM rescoring by both methods."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_k2, require_shared


@pytest.fixture(scope="module")
def yesno_graph(tmp_path_factory):
    """(graph dir, lang dir, tree, trans model, words, LM dir) with a bigram LM that prefers 'NO NO YES' starts."""
    from test_graph_hclg import build

    require_k2()  # a skip with a message without k2, a failure under CI
    from asrhybrid.lang.io import read_symbol_table
    from asrhybrid.lang.prepare_lang import prepare_lang

    tmp = tmp_path_factory.mktemp("decode")
    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    lang = prepare_lang(tutorial / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(["YES", "NO"], 8)) for _ in range(40)] + ["NO NO YES"] * 20
    tree, trans_model, _ = build(tmp, lang, sentences)
    return tmp / "graph", lang, tree, trans_model, read_symbol_table(lang / "words.txt"), tmp / "lm"


def planted_pdf_scores(lang, tree, trans_model, words, sentences, seed=0, frames_per_word=30, noise=0.0):
    """[T, num_pdfs]: 0 on the pdfs of one alignment of each sentence, -20 elsewhere. Sentences of as many
    one-phone words get the same segmentation (the same seed), so they differ only where their words do."""
    from test_graph_hclg import planted_loglikes

    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array())
    out = None
    for k, sentence in enumerate(sentences):
        tids = planted_loglikes(lang, tree, trans_model, words, sentence, frames_per_word, seed).argmax(1) + 1
        m = np.full((len(tids), trans_model.num_pdfs), -20.0, dtype=np.float32)
        m[np.arange(len(tids)), tid_to_pdf[tids]] = 0.0
        out = m if out is None else np.maximum(out, m[: len(out)])
    rng = np.random.default_rng(seed)
    return out + noise * rng.standard_normal(out.shape).astype(np.float32)


def test_planted_scores_decode_to_the_planted_words_with_k2_and_kaldi(yesno_graph):
    from asrhybrid.decode.decoder import DecodeConfig, KaldiDecoder, decode_batch
    from asrhybrid.graph.k2graph import DecodingGraph

    graph_dir, lang, tree, trans_model, words, _ = yesno_graph
    graph = DecodingGraph.load(graph_dir)
    sentences = ["YES NO YES", "NO NO NO YES YES NO YES NO", "YES", "NO YES YES NO"]
    batch = [
        (f"u{k}", planted_pdf_scores(lang, tree, trans_model, words, [s], seed=k, noise=0.5))
        for k, s in enumerate(sentences)
    ]
    cfg = DecodeConfig(acwt=1.0)
    hyps = decode_batch(graph, batch, cfg)
    kaldi = KaldiDecoder(graph, cfg)
    for (utt, scores), hyp, sentence in zip(batch, hyps, sentences):
        assert " ".join(graph.words[w] for w in hyp.words) == sentence
        ref = kaldi.decode(utt, scores)
        assert ref.words == hyp.words and hyp.cost == pytest.approx(ref.cost, rel=1e-4, abs=1e-3)
        assert len(hyp.tids) == scores.shape[0]
        assert [graph.tid_to_pdf[t] for t in hyp.tids] == [
            graph.tid_to_pdf[t] for t in ref.tids
        ] or hyp.cost == pytest.approx(ref.cost, abs=1e-3)
        # the word lattice's best path at LM weight 1/acwt is the search's best path, its costs kept apart
        best = hyp.lattice.best_path(1.0 / cfg.acwt)
        assert best.words == tuple(hyp.words) and best.tids == tuple(hyp.tids)
        assert best.graph + cfg.acwt * best.acoustic == pytest.approx(hyp.cost, abs=1e-3)
        acoustic = -sum(float(scores[t, graph.tid_to_pdf[tid]]) for t, tid in enumerate(hyp.tids))
        assert best.acoustic == pytest.approx(acoustic, abs=1e-2)


def test_bad_utterances_fail_alone(yesno_graph):
    from asrhybrid.decode.decoder import DecodeConfig, decode_batch
    from asrhybrid.graph.k2graph import DecodingGraph

    graph_dir, lang, tree, trans_model, words, _ = yesno_graph
    graph = DecodingGraph.load(graph_dir)
    good = planted_pdf_scores(lang, tree, trans_model, words, ["YES NO"])
    batch = [
        ("wide", np.zeros((50, graph.num_pdfs + 3), np.float32)),
        ("empty", np.zeros((0, graph.num_pdfs), np.float32)),
        ("nan", np.full((40, graph.num_pdfs), np.nan, np.float32)),
        ("good", good),
    ]
    hyps = {h.utt: h for h in decode_batch(graph, batch, DecodeConfig(acwt=1.0))}
    assert "wide" in hyps["wide"].error and f"{graph.num_pdfs} pdfs" in hyps["wide"].error
    assert "zero frames" in hyps["empty"].error and "not finite" in hyps["nan"].error
    assert hyps["good"].ok and [graph.words[w] for w in hyps["good"].words] == ["YES", "NO"]


def _decode_dir(tmp_path, graph_dir, scores: dict[str, np.ndarray], cfg):
    from asrhybrid.decode.corpus import decode_corpus
    from asrhybrid.decode.scores import LoglikeArchive
    from asrhybrid.kaldi_tables import matrix_table_writer

    ark = tmp_path / "loglikes.ark"
    with matrix_table_writer(ark) as write:
        for utt, m in scores.items():
            write(utt, m)
    decode_corpus(graph_dir, LoglikeArchive(ark), tmp_path / "decode", cfg=cfg, nj=2)
    return tmp_path / "decode"


def test_rescoring_with_the_first_pass_lm_keeps_the_best_paths_and_a_planted_lm_flips_them(yesno_graph, tmp_path):
    """Scores equally good for 'NO NO YES' and 'YES NO YES': the first-pass bigram (which saw 'NO NO YES' 20 times)
    picks the first; rescoring with it again changes nothing; an LM trained on 'YES NO YES' picks the second, by
    both methods, and the score and lattice files name the utterances."""
    from asrhybrid.decode.decoder import DecodeConfig
    from asrhybrid.decode.rescore import rescore_decode_dir
    from asrhybrid.lm.train import train_lm
    from asrhybrid.score.grid import score_decode_dir

    graph_dir, lang, tree, trans_model, words, lm_dir = yesno_graph
    scores = {
        f"amb{k}": planted_pdf_scores(lang, tree, trans_model, words, ["NO NO YES", "YES NO YES"], seed=k)
        for k in range(3)
    }
    decode = _decode_dir(tmp_path, graph_dir, scores, DecodeConfig(acwt=1.0, lattice_beam=15, output_beam=15))
    refs = {u: "YES NO YES" for u in scores}
    first = score_decode_dir(decode, refs, lmwts=[1.0], wips=[0.0])
    assert first["wer"] > 0  # the first-pass LM prefers NO NO YES
    old = lm_dir / "lm.arpa"
    planted = train_lm(["YES NO YES"] * 30 + ["NO YES"], tmp_path / "planted", "planted", 2)["arpa"]
    for method in ("lattice", "nbest"):
        same = rescore_decode_dir(decode, old, old, tmp_path / f"same_{method}", method)
        assert same["rescoring"]["lattices"] == 3
        again = score_decode_dir(tmp_path / f"same_{method}", refs, lmwts=[1.0], wips=[0.0])
        assert again["wer"] == first["wer"]
        rescore_decode_dir(decode, old, planted, tmp_path / f"new_{method}", method)
        flipped = score_decode_dir(tmp_path / f"new_{method}", refs, lmwts=[1.0], wips=[0.0])
        assert flipped["wer"] == 0.0, method
    recogs = (tmp_path / "new_lattice" / "recogs-1_0.txt").read_text()
    assert "amb0:\thyp=['YES', 'NO', 'YES']" in recogs


def test_decode_dir_counts_failures_and_scores_them_as_deletions(yesno_graph, tmp_path):
    from asrhybrid.decode.decoder import DecodeConfig
    from asrhybrid.score.grid import score_decode_dir

    graph_dir, lang, tree, trans_model, words, _ = yesno_graph
    scores = {
        "good": planted_pdf_scores(lang, tree, trans_model, words, ["YES NO"]),
        "bad": np.zeros((30, trans_model.num_pdfs + 1), np.float32),
    }
    decode = _decode_dir(tmp_path, graph_dir, scores, DecodeConfig(acwt=1.0))
    summary = json.loads((decode / "decode.json").read_text())
    assert summary["utterances"] == 2 and summary["decoded"] == 1
    assert summary["failed"][0]["utt"] == "bad" and "pdfs" in summary["failed"][0]["error"]
    result = score_decode_dir(decode, {"good": "YES NO", "bad": "NO YES"}, lmwts=[1.0], wips=[0.0])
    assert "[ 2 / 4, 0 ins, 2 del, 0 sub ] [PARTIAL]" in result["wer_line"]
    assert result["without_hypothesis"] == ["bad"] and result["failed_decoding"][0]["utt"] == "bad"


def test_corrupt_lattice_archive_loses_only_its_lattice(tmp_path):
    from asrhybrid.decode.lattice import read_kaldi_lattices

    path = tmp_path / "lat.txt"
    path.write_text("a\n0\t1\t3\t1,2,5_5\n1\t0,0,\n\nb\n0\t1\t3\tnot-a-weight\n1\n\nc\n0\t1\t4\t1,1,7\n1\t0,0,\n\n")
    bad: list[str] = []
    keys = [k for k, _ in read_kaldi_lattices(path, bad)]
    assert keys == ["a", "c"] and len(bad) == 1 and "lattice 'b'" in bad[0] and f"{path}:6" in bad[0]
    with pytest.raises(ValueError, match="lattice 'b'"):
        list(read_kaldi_lattices(path))


def test_cuda_decoding_equals_cpu(yesno_graph):
    """The same batch on CUDA (k2 built with CUDA) gives the CPU's words and costs."""
    import torch

    from asrhybrid.decode.decoder import DecodeConfig, decode_batch
    from asrhybrid.fsa.k2_engine import with_cuda
    from asrhybrid.graph.k2graph import DecodingGraph

    if not (torch.cuda.is_available() and with_cuda()):
        pytest.skip("no CUDA device, or k2 built without CUDA (make setup builds it for CPU)")
    graph_dir, lang, tree, trans_model, words, _ = yesno_graph
    graph = DecodingGraph.load(graph_dir)
    batch = [
        (f"u{k}", planted_pdf_scores(lang, tree, trans_model, words, [s], seed=k, noise=0.5))
        for k, s in enumerate(["YES NO YES", "NO NO NO YES"])
    ]
    cpu = decode_batch(graph, batch, DecodeConfig(acwt=1.0))
    gpu = decode_batch(graph, batch, DecodeConfig(acwt=1.0), device="cuda")
    for a, b in zip(cpu, gpu):
        assert a.words == b.words and a.cost == pytest.approx(b.cost, abs=1e-2)
        assert a.lattice.best_path(1.0).words == b.lattice.best_path(1.0).words


def test_rescoring_with_an_lm_of_unknown_words_names_them(yesno_graph, tmp_path):
    from asrhybrid.decode.decoder import DecodeConfig
    from asrhybrid.decode.rescore import rescore_decode_dir
    from asrhybrid.errors import DataError
    from asrhybrid.lm.train import train_lm

    graph_dir, lang, tree, trans_model, words, lm_dir = yesno_graph
    decode = _decode_dir(
        tmp_path,
        graph_dir,
        {"u": planted_pdf_scores(lang, tree, trans_model, words, ["YES NO"])},
        DecodeConfig(acwt=1.0),
    )
    foreign = train_lm(["YES MAYBE NO"] * 5, tmp_path / "foreign", "foreign", 2)["arpa"]
    for method in ("lattice", "nbest"):
        with pytest.raises(DataError, match="word 'MAYBE' is not in the lattices' words.txt"):
            rescore_decode_dir(decode, lm_dir / "lm.arpa", foreign, tmp_path / f"out_{method}", method)
