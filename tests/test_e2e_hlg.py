"""WFST decoding of CTC output over HLG (asrhybrid.e2e.hlg) with stage 8's k2 decoder: the best path and the
lattice's word sequences against brute force over every word sequence, on a real SentencePiece model and a
real G.fst (kaldilm's arpa2fst) of a bigram ARPA that KenLM scores."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from asrhybrid.e2e.tokens import BLANK, TokenSet
from asrhybrid.lm.bpe import train_tokens

WORDS = ["NO", "YE", "YES"]  # YE is a prefix of YES: the pieces' word starts keep L unambiguous


def _bigram_arpa() -> str:
    """Every bigram listed and back-offs of 10^-2: no back-off path beats a listed bigram, so G's best path
    (tropical) scores a sentence as the ARPA does."""
    rng = np.random.default_rng(3)
    histories, nexts = ["<s>", *WORDS], [*WORDS, "</s>"]
    bigrams = [f"{-rng.uniform(0.1, 1.2):.3f}\t{h} {w}" for h in histories for w in nexts]
    unigrams = ["-99\t<s>\t-2.0", "-1.0\t</s>"] + [f"-1.0\t{w}\t-2.0" for w in WORDS]
    return (
        f"\\data\\\nngram 1={len(unigrams)}\nngram 2={len(bigrams)}\n\n\\1-grams:\n"
        + "\n".join(unigrams)
        + "\n\n\\2-grams:\n"
        + "\n".join(bigrams)
        + "\n\n\\end\\\n"
    )


@pytest.fixture(scope="module")
def hlg_setup(tmp_path_factory):
    from conftest import require_k2

    from asrhybrid.decode.rescore import open_lm
    from asrhybrid.e2e.hlg import make_hlg_graph
    from asrhybrid.lm.train import arpa_to_g

    require_k2()
    root = tmp_path_factory.mktemp("hlg")
    train_tokens(["YES NO", "NO NO YES", "YES YES NO", "YE NO"], root / "tokens", vocab_size=9, model_type="char")
    lang = root / "lang"
    lang.mkdir()
    symbols = ["<eps>", *WORDS, "ZZZ", "#0", "<s>", "</s>"]  # ZZZ: no piece spells it
    (lang / "words.txt").write_text("".join(f"{w} {i}\n" for i, w in enumerate(symbols)))
    (root / "lm.arpa").write_text(_bigram_arpa())
    arpa_to_g(root / "lm.arpa", lang / "words.txt", lang / "G.fst")
    stats = make_hlg_graph(root / "tokens", lang, root / "graph")
    ids = {w: i for i, w in enumerate(symbols)}
    return (
        TokenSet(root / "tokens"),
        root / "graph",
        open_lm(root / "lm.arpa", {i: w for w, i in ids.items()}),
        ids,
        stats,
    )


def ctc_viterbi(log_probs: np.ndarray, tokens: list[int]) -> float:
    """The best CTC alignment's log-probability of ``tokens`` (blanks between, repeats merged)."""
    ext = [BLANK]
    for t in tokens:
        ext += [t, BLANK]
    best = np.full(len(ext), -math.inf)
    best[0] = log_probs[0, ext[0]]
    if len(ext) > 1:
        best[1] = log_probs[0, ext[1]]
    for t in range(1, len(log_probs)):
        prev = best.copy()
        best[1:] = np.maximum(best[1:], prev[:-1])
        for s in range(2, len(ext)):
            if ext[s] != BLANK and ext[s] != ext[s - 2]:
                best[s] = max(best[s], prev[s - 2])
        best = best + log_probs[t, ext]
    return float(max(best[-1], best[-2] if len(ext) > 1 else -math.inf))


def brute_force(log_probs, tokens: TokenSet, lm, ids) -> dict[tuple[str, ...], float]:
    """Every word sequence of up to 4 words: its cost, -(best CTC alignment + LM log-probability)."""
    costs = {}
    for n in range(5):
        for words in itertools.product(WORDS, repeat=n):
            spelled = [t for w in words for t in tokens.spell(w)]
            acoustic = ctc_viterbi(log_probs, spelled) if spelled else float(log_probs[:, BLANK].sum())
            if acoustic > -math.inf:
                costs[words] = -acoustic + lm.sentence_cost(tuple(ids[w] for w in words))
    return costs


def test_hlg_spells_the_words_and_leaves_out_the_unspellable(hlg_setup):
    _, graph_dir, _, _, stats = hlg_setup
    assert stats["words"] == 3 and stats["left_out"] == ["ZZZ"]
    assert (graph_dir / "HLG.k2.pt").is_file() and (graph_dir / "words.txt").is_file()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hlg_decoding_best_path_and_lattice_equal_brute_force(hlg_setup, seed):
    from asrhybrid.decode.decoder import DecodeConfig, decode_batch
    from asrhybrid.graph.k2graph import DecodingGraph

    tokens, graph_dir, lm, ids, _ = hlg_setup
    graph = DecodingGraph.load(graph_dir)
    assert graph.is_hlg and graph.num_pdfs == len(tokens)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(12, len(tokens))) * 2.0
    log_probs = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
    cfg = DecodeConfig(acwt=0.1, search_beam=40, output_beam=20, lattice_beam=4.0)
    (hyp,) = decode_batch(graph, [("u", log_probs / cfg.acwt)], cfg)  # the search sees the log-posteriors at scale 1
    costs = brute_force(log_probs, tokens, lm, ids)
    best_words = min(costs, key=costs.get)
    assert [graph.words[w] for w in hyp.words] == list(best_words)
    assert hyp.cost == pytest.approx(costs[best_words], rel=1e-4)
    # per frame, the alignment string holds token id + 1, blanks included
    assert len(hyp.tids) == len(log_probs) and all(1 <= t <= len(tokens) for t in hyp.tids)
    # the lattice: each word sequence within the lattice beam, with its best cost (its acoustic costs are the
    # search's divided by acwt)
    paths = {
        tuple(graph.words[w] for w in p.words): p.graph + cfg.acwt * p.acoustic
        for p in hyp.lattice.nbest(500, lmwt=1 / cfg.acwt)
    }
    within = {w: c for w, c in costs.items() if c <= costs[best_words] + cfg.lattice_beam - 1e-3}
    assert set(within) <= set(paths)
    for words, cost in paths.items():
        assert cost == pytest.approx(costs[words], rel=1e-4), words


def test_a_corrupt_hlg_is_named(hlg_setup, tmp_path):
    from asrhybrid.errors import DataError
    from asrhybrid.graph.k2graph import DecodingGraph

    _, graph_dir, _, _, _ = hlg_setup
    bad = tmp_path / "graph"
    bad.mkdir()
    (bad / "HLG.k2.pt").write_bytes((graph_dir / "HLG.k2.pt").read_bytes()[:100])
    (bad / "words.txt").write_bytes((graph_dir / "words.txt").read_bytes())
    with pytest.raises(DataError, match="HLG.k2.pt: cannot be read"):
        DecodingGraph.load(bad)
