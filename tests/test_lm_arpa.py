"""ARPA reading, KenLM lmplz, and G.fst against the reference values in ../shared/testdata/arpa."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import require_shared

from asrhybrid.errors import DataError
from asrhybrid.lm.arpa import read_arpa
from asrhybrid.lm.train import arpa_to_g, prepare_lm_text, train_lm


@pytest.fixture
def arpa_dir():
    return require_shared("testdata", "arpa")


KENLM_CONTINUATION = [  # kenlm lm/model_test.cc: (word, log10 prob, n-gram length)
    ("looking", -0.484652, 2),
    ("on", -0.348837, 3),
    ("a", -0.0155266, 4),
    ("little", -0.00306122, 5),
    ("the", -4.04005, 1),
    ("biarritz", -1.9889, 1),
    ("not_found", -2.29666, 1),
]


def test_kenlm_test_arpa_word_scores(arpa_dir):
    model = read_arpa(arpa_dir / "kenlm_test.arpa")
    history = ("<s>",)
    for word, expected, length in KENLM_CONTINUATION:
        score, n = model.log10_prob(word, history)
        assert score == pytest.approx(expected, rel=1e-5) and n == length, word
        history += (word if word != "not_found" else "<unk>",)
    words = "looking on a little the biarritz not_found more .".split()
    assert model.sentence_log10(words) == pytest.approx(-30.91680, abs=1e-4)


def test_kaldilm_test_arpa_matches_kenlm_python_values(arpa_dir):
    model = read_arpa(arpa_dir / "kaldilm_test.arpa")
    assert model.sentence_log10(["a"], bos=False, eos=False) == pytest.approx(-0.6989700, abs=1e-5)
    assert model.sentence_log10(["a", "b"]) == pytest.approx(-2.0894812, abs=1e-5)
    assert model.sentence_log10(["b", "d"]) == pytest.approx(-5.2709675, abs=1e-5)
    assert model.sentence_log10(["g"], eos=False) == pytest.approx(-100.8573325, abs=1e-5)


def _sentence_cost(G, word_ids, words, disambig_id):
    """Tropical cost of a word sequence through G, #0 back-off arcs taken as epsilon (Kaldi's ScoringTest)."""
    from asrhybrid.kaldi_wrappers import kaldifst

    g = kaldifst.StdVectorFst()
    for _ in range(G.num_states):
        g.add_state()
    g.start = G.start
    for s in range(G.num_states):
        for arc in kaldifst.ArcIterator(G, s):
            label = 0 if arc.ilabel == disambig_id else arc.ilabel
            g.add_arc(s, kaldifst.StdArc(label, label, arc.weight, arc.nextstate))
        g.set_final(s, G.final(s))
    sentence = kaldifst.make_linear_acceptor([word_ids[w] for w in words])
    kaldifst.arcsort(g, sort_type="ilabel")
    best = kaldifst.shortest_path(kaldifst.compose(sentence, g))
    total = 0.0
    for s in range(best.num_states):
        for arc in kaldifst.ArcIterator(best, s):
            total += arc.weight.value
        if best.final(s).value != float("inf"):
            total += best.final(s).value
    return total


def test_g_fst_scores_kaldis_cases(tmp_path, arpa_dir):
    words = tmp_path / "words.txt"
    words.write_text("<eps> 0\na 1\nb 2\n#0 3\n<s> 4\n</s> 5\n")
    G = arpa_to_g(arpa_dir / "kaldi_input.arpa", words, tmp_path / "G.fst")
    ids = {"a": 1, "b": 2}
    assert _sentence_cost(G, ids, ["a", "b"], 3) == pytest.approx(4.36082, rel=1e-3)
    assert _sentence_cost(G, ids, ["b", "b", "b", "a"], 3) == pytest.approx(59.2649, rel=1e-3)
    expected = (arpa_dir / "kaldilm_input_G_fst.expected.txt").read_text()
    # The same arcs as kaldilm's documented output (our compile renumbers states by first appearance).
    from asrhybrid.kaldi_wrappers import kaldifst

    assert str(kaldifst.compile(s=expected, acceptor=False)) == str(kaldifst.StdVectorFst.read(str(tmp_path / "G.fst")))


def test_missing_bos_fails(tmp_path, arpa_dir):
    with pytest.raises(DataError, match="no <s> unigram"):
        read_arpa(arpa_dir / "kaldi_missing_bos.arpa")


def test_malformed_arpa_line_is_named(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1.0 <s> -0.5\n-0.5 </s>\nabc word\n\n\\end\\\n")
    with pytest.raises(DataError, match=r"bad.arpa:7: not a number"):
        read_arpa(bad)


def test_g_refuses_words_outside_the_symbol_table(tmp_path, arpa_dir):
    words = tmp_path / "words.txt"
    words.write_text("<eps> 0\na 1\n#0 2\n<s> 3\n</s> 4\n")
    with pytest.raises(DataError, match="word 'b' is not in"):
        arpa_to_g(arpa_dir / "kaldi_input.arpa", words, tmp_path / "G.fst")


def test_lmplz_trigram_scores_like_the_arpa_read_by_hand(tmp_path):
    import kenlm

    text = ["the red dog saw a cat", "a cat saw the red dog", "the dog ran", "a red cat ran away", "the cat saw a dog"]
    summary = train_lm(text, tmp_path, "tg", 3, binary=True, dev_lines=["the red cat saw a dog"])
    arpa = read_arpa(summary["arpa"])
    assert arpa.order == 3 and arpa.counts[3] > 0
    for model in (kenlm.Model(summary["arpa"]), kenlm.Model(summary["binary"])):
        for sentence in ["the red dog saw a cat", "a dog ran away", "cat the dog unknownword"]:
            assert model.score(sentence) == pytest.approx(arpa.sentence_log10(sentence.split()), abs=1e-4)
    ppl = summary["dev_perplexity"]
    log10_total = arpa.sentence_log10("the red cat saw a dog".split())
    assert ppl == pytest.approx(10 ** (-log10_total / 7), rel=1e-4)
    assert math.isfinite(ppl)


def test_lm_text_errors_name_the_line():
    with pytest.raises(DataError, match="the LM training text is empty"):
        prepare_lm_text(["", "  "], None, None, "text")
    with pytest.raises(DataError, match=r"text:2: '#0' is a reserved symbol"):
        prepare_lm_text(["A B", "A #0 B"], None, None, "text")
    with pytest.raises(DataError, match=r"text:1: word 'C' is not in the symbol table"):
        prepare_lm_text(["A C"], {"A", "B"}, None, "text")
    assert prepare_lm_text(["A C"], {"A", "B", "<UNK>"}, "<UNK>", "text") == ["A <UNK>"]


@pytest.mark.parametrize("toy", ["kenlm_toy0", "kenlm_toy1"])
def test_our_lmplz_reproduces_kenlms_own_toy_models(tmp_path, arpa_dir, toy):
    """KenLM's test data was made with `lmplz --discount_fallback -o 3`: our build must give the same model."""
    from asrhybrid.lm.train import train_arpa

    ours = read_arpa(train_arpa(arpa_dir / f"{toy}_corpus.txt", tmp_path / "toy.arpa", 3, discount_fallback=True))
    theirs = read_arpa(arpa_dir / f"{toy}.arpa")
    assert ours.counts == theirs.counts
    assert ours.ngrams.keys() == theirs.ngrams.keys()
    for ngram, (prob, backoff) in theirs.ngrams.items():
        assert ours.ngrams[ngram] == pytest.approx((prob, backoff), abs=1e-6), ngram


def test_unigram_perplexity_equals_kenlms_query(tmp_path):
    """KenLM's query code needs order >= 2, so unigram LMs (yesno, digits) are scored from the ARPA by our scorer.

    The reference is KenLM itself on the same distribution written as a bigram model: one explicit bigram
    "<s> YES" carrying YES's unigram log-probability and a zero back-off for <s>, so every bigram
    probability equals the unigram one."""
    import kenlm

    summary = train_lm(["YES NO YES", "NO NO YES", "YES YES"], tmp_path, "ug", 1, dev_lines=["YES NO", "NO NO YES"])
    lines = Path(summary["arpa"]).read_text().splitlines()
    unigrams = {}
    for line in lines[lines.index("\\1-grams:") + 1 :]:
        if not line.strip():
            break
        prob, word = line.split()[:2]
        unigrams[word] = float(prob)
    bigram = ["\\data\\", f"ngram 1={len(unigrams)}", "ngram 2=1", "", "\\1-grams:"]
    bigram += [f"{p}\t{w}\t0" if w == "<s>" else f"{p}\t{w}" for w, p in unigrams.items()]
    bigram += ["", "\\2-grams:", f"{unigrams['YES']}\t<s> YES", "", "\\end\\", ""]
    (tmp_path / "as_bigram.arpa").write_text("\n".join(bigram))
    model = kenlm.Model(str(tmp_path / "as_bigram.arpa"))
    log10 = sum(model.score(s, bos=True, eos=True) for s in ("YES NO", "NO NO YES"))
    words = 2 + 3 + 2  # with </s> each
    assert summary["dev_perplexity"] == pytest.approx(10 ** (-log10 / words), abs=5e-4)  # stored to 3 decimals


def test_token_models(tmp_path):
    import sentencepiece as spm

    from asrhybrid.lm.bpe import train_tokens

    texts = ["THE RED DOG SAW A CAT", "A CAT SAW THE RED DOG", "THE DOG RAN AWAY FROM THE CAT"] * 20
    for model_type, size in (("bpe", 20), ("unigram", 20), ("char", 20)):
        model = train_tokens(texts, tmp_path / model_type, size, model_type)
        sp = spm.SentencePieceProcessor(model_file=str(model))
        assert [sp.id_to_piece(i) for i in range(3)] == ["<blk>", "<sos/eos>", "<unk>"]
        assert sp.decode(sp.encode(texts[2])) == texts[2]
        if model_type == "char":
            assert all(len(p.lstrip("▁")) <= 1 for p in sp.encode(texts[0], out_type=str))
        else:
            assert sp.get_piece_size() == size

    from asrhybrid.errors import ConfigError

    with pytest.raises(ConfigError, match="Vocabulary size too high"):
        train_tokens(texts, tmp_path / "big", 500, "bpe")
