"""HCLG built like mkgraph.sh decodes planted utterances back to their words (kaldi_decoder)."""

from __future__ import annotations

import numpy as np
from conftest import require_shared

from asrhybrid.graph.mkgraph import load_hclg, mkgraph
from asrhybrid.hmm import init_mono_model
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.lang.lexicon import corpus_dict_dir
from asrhybrid.lang.prepare_lang import prepare_lang
from asrhybrid.lm.train import arpa_to_g, train_lm


def planted_loglikes(lang_dir, tree, trans_model, words, sentence, frames_per_word=30, seed=0):
    """A [T, num_tids] matrix that is 0 on one transition-id path of ``sentence``'s training graph, -20 elsewhere."""
    from asrhybrid.align.graphs import GraphCompiler, equal_alignment

    graph = GraphCompiler(lang_dir, tree, trans_model).compile(sentence)
    tids = equal_alignment(graph, frames_per_word * len(sentence.split()), seed)
    assert tids is not None
    loglikes = np.full((len(tids), trans_model.num_transition_ids), -20.0, dtype=np.float32)
    loglikes[np.arange(len(tids)), np.array(tids) - 1] = 0.0
    return loglikes


def decode_words(hclg, loglikes, words):
    from asrhybrid.kaldi_wrappers import kaldifst, kd

    decoder = kd.FasterDecoder(hclg, kd.FasterDecoderOptions(beam=20.0))
    decoder.decode(kd.DecodableCtc(loglikes))
    ok, best = decoder.get_best_path()
    assert ok
    inverse = {i: w for w, i in words.items()}
    return " ".join(inverse[i] for i in kaldifst.get_linear_symbol_sequence(best)[2])


def build(tmp_path, lang, sentences, order=2):
    lm = train_lm(sentences, tmp_path / "lm", "lm", order)
    arpa_to_g(lm["arpa"], lang / "words.txt", lang / "G.fst")
    tree, trans_model = init_mono_model(lang, tmp_path / "mono")
    stats = mkgraph(lang, tmp_path / "mono", tmp_path / "graph")
    return tree, trans_model, stats


def test_yesno_hclg_decodes_planted_utterances(tmp_path):
    tutorial = require_shared("testdata", "kaldi_formats", "yesno_tutorial")
    lang = prepare_lang(tutorial / "dict", tmp_path / "lang", "<SIL>", position_dependent_phones=False)
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(["YES", "NO"], 8)) for _ in range(40)]
    tree, trans_model, stats = build(tmp_path, lang, sentences)
    assert stats["unreachable_words"] == ["<SIL>"]  # not in the LM, as in Kaldi's yesno
    hclg, words = load_hclg(tmp_path / "graph"), read_symbol_table(lang / "words.txt")
    for k, sentence in enumerate(["YES NO YES", "NO NO NO YES YES NO YES NO", "YES"]):
        assert decode_words(hclg, planted_loglikes(lang, tree, trans_model, words, sentence, seed=k), words) == sentence


def build_200_word_graph(tmp_path):
    """(lang, tree, trans model, LM sentences) of a bigram HCLG over 200 synth words (CMUdict, position-dependent phones)."""
    from asrhybrid.data.synth.grammar import generate_sentence, vocabulary

    vocab = vocabulary()[:200]
    corpus_dict_dir(tmp_path / "dict", set(vocab))
    lang = prepare_lang(tmp_path / "dict", tmp_path / "lang", "<UNK>")
    rng = np.random.default_rng(1)
    chosen = set(vocab)
    sentences = []
    while len(sentences) < 2000:
        words = [w for w in generate_sentence(rng).split() if w in chosen]
        if words:
            sentences.append(" ".join(words))
    sentences += vocab  # every word in the LM
    tree, trans_model, stats = build(tmp_path, lang, sentences)
    assert set(stats["unreachable_words"]) <= {"!SIL", "<SPOKEN_NOISE>", "<UNK>"}  # not in the LM text
    return lang, tree, trans_model, sentences


def test_200_word_hclg_with_position_dependent_phones(tmp_path):
    lang, tree, trans_model, sentences = build_200_word_graph(tmp_path)
    hclg, words = load_hclg(tmp_path / "graph"), read_symbol_table(lang / "words.txt")
    for k in range(5):
        sentence = sentences[k * 7]
        assert decode_words(hclg, planted_loglikes(lang, tree, trans_model, words, sentence, seed=k), words) == sentence
