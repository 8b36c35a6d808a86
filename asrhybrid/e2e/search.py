"""CTC searches: prefix beam search with word n-gram shallow fusion (Hannun 2014's decoder), its exhaustive
reference, and flashlight-text's lexicon decoder (the one torchaudio wraps).

The fused score of a token sequence y with words w(y) is Deep Speech's
Q(y) = log P_ctc(y | x) + alpha log P_lm(w(y)) + beta |w(y)|,
with log P_ctc the sum over all CTC alignments of y and the LM's sentence probability (``</s>`` included)
in natural logs. During the search a word enters the LM (and earns beta) when the next word starts, and the
last one at the end, so a prefix is scored on its finished words.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions, SmearingMode, Trie
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from asrhybrid.e2e.tokens import BLANK, TokenSet

NEG_INF = -math.inf


def _lse(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


@dataclass(frozen=True)
class _LmContext:
    cost: float  # natural-log LM cost of the finished words
    words: int  # finished words
    state: object
    pending: tuple[int, ...]  # tokens of the word being spelled


class WordFusion:
    """LM costs of token prefixes through a word LM scorer (asrhybrid.decode.rescore.open_lm's)."""

    def __init__(self, tokens: TokenSet, lm=None, alpha: float = 0.0, beta: float = 0.0):
        self.tokens, self.lm, self.alpha, self.beta = tokens, lm, alpha, beta
        self._cache: dict[tuple[int, ...], _LmContext] = {}

    def context(self, prefix: tuple[int, ...]) -> _LmContext:
        hit = self._cache.get(prefix)
        if hit is not None:
            return hit
        if not prefix:
            ctx = _LmContext(0.0, 0, self.lm.start() if self.lm is not None else None, ())
        else:
            parent, token = self.context(prefix[:-1]), prefix[-1]
            if self.tokens.starts_word[token] and parent.pending:
                cost, state = self._word(parent)
                ctx = _LmContext(parent.cost + cost, parent.words + 1, state, (token,))
            else:
                ctx = _LmContext(parent.cost, parent.words, parent.state, parent.pending + (token,))
        self._cache[prefix] = ctx
        return ctx

    def _word(self, ctx: _LmContext) -> tuple[float, object]:
        if self.lm is None:
            return 0.0, None
        return self.lm.step_word(ctx.state, self.tokens.text(list(ctx.pending)))

    def partial_score(self, prefix: tuple[int, ...]) -> float:
        ctx = self.context(prefix)
        return -self.alpha * ctx.cost + self.beta * ctx.words

    def final_score(self, prefix: tuple[int, ...]) -> float:
        ctx = self.context(prefix)
        cost, words, state = ctx.cost, ctx.words, ctx.state
        if ctx.pending:
            c, state = self._word(ctx)
            cost, words = cost + c, words + 1
        if self.lm is not None:
            cost += self.lm.end(state)
        return -self.alpha * cost + self.beta * words


def prefix_beam_search(
    log_probs: np.ndarray, fusion: WordFusion, beam: int = 16, token_beam: float = 12.0, nbest: int = 1
) -> list[tuple[tuple[int, ...], float]]:
    """The best token sequences by Q (their fused scores), best first, of [T, V] CTC log-probabilities.
    ``token_beam``: per frame, tokens more than this below the frame's best are not tried."""
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, NEG_INF)}  # prefix: (log p blank-ending, other)
    for lp in log_probs:
        candidates = [int(c) for c in np.nonzero(lp >= lp.max() - token_beam)[0] if c != BLANK]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            entry = nxt.setdefault(prefix, [NEG_INF, NEG_INF])
            entry[0] = _lse(entry[0], total + lp[BLANK])
            if prefix:
                entry[1] = _lse(entry[1], pnb + lp[prefix[-1]])  # the last token held
            for c in candidates:
                grown = nxt.setdefault(prefix + (c,), [NEG_INF, NEG_INF])
                grown[1] = _lse(grown[1], (pb if prefix and c == prefix[-1] else total) + lp[c])
        ranked = sorted(nxt.items(), key=lambda kv: _lse(*kv[1]) + fusion.partial_score(kv[0]), reverse=True)
        beams = {p: (s[0], s[1]) for p, s in ranked[:beam]}
    final = sorted(((p, _lse(*s) + fusion.final_score(p)) for p, s in beams.items()), key=lambda x: -x[1])
    return final[:nbest]


def ctc_log_prob(log_probs: np.ndarray, labels: tuple[int, ...]) -> float:
    """log P_ctc(labels | x): the forward algorithm over the blank-interleaved labels."""
    ext = [BLANK]
    for t in labels:
        ext += [t, BLANK]
    alpha = np.full(len(ext), NEG_INF)
    alpha[0] = log_probs[0][BLANK]
    if len(ext) > 1:
        alpha[1] = log_probs[0][ext[1]]
    for lp in log_probs[1:]:
        new = np.full(len(ext), NEG_INF)
        for s, token in enumerate(ext):
            a = alpha[s]
            if s >= 1:
                a = _lse(a, alpha[s - 1])
            if s >= 2 and token != BLANK and token != ext[s - 2]:
                a = _lse(a, alpha[s - 2])
            new[s] = a + lp[token]
        alpha = new
    return _lse(alpha[-1], alpha[-2]) if len(ext) > 1 else alpha[-1]


def exhaustive_search(log_probs: np.ndarray, fusion: WordFusion) -> tuple[tuple[int, ...], float]:
    """The reference for tiny inputs: every alignment (V^T of them) collapsed to its token sequence, the
    sequences' probabilities summed, the best by Q."""
    T, V = log_probs.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        labels = tuple(t for i, t in enumerate(path) if t != BLANK and (i == 0 or t != path[i - 1]))
        totals[labels] = _lse(totals.get(labels, NEG_INF), float(sum(log_probs[i][t] for i, t in enumerate(path))))
    return max(((y, p + fusion.final_score(y)) for y, p in totals.items()), key=lambda x: x[1])


class FlashlightDecoder:
    """flashlight-text's LexiconDecoder over a word KenLM: the words of ``lexicon_words`` spelled in the
    token set's pieces (the first starting with ``▁``, so no silence token: the blank stands in)."""

    def __init__(
        self,
        tokens: TokenSet,
        lm_path,
        lexicon_words: list[str],
        alpha: float,
        beta: float,
        beam: int = 50,
        beam_threshold: float = 25.0,
        unk_score: float = -math.inf,
    ):
        self.tokens = tokens
        token_dict = Dictionary()
        for piece in tokens.pieces:
            token_dict.add_entry(piece)
        word_dict = Dictionary()
        words = sorted(set(lexicon_words) | {"<unk>"})
        for w in words:
            word_dict.add_entry(w)
        self.word_dict = word_dict
        self.lm = KenLM(str(lm_path), word_dict)
        start = self.lm.start(False)
        trie = Trie(len(tokens), BLANK)
        for w in words:
            if w == "<unk>":
                continue
            _, score = self.lm.score(start, word_dict.get_index(w))
            trie.insert(tokens.spell(w), word_dict.get_index(w), score)
        trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(
            beam_size=beam,
            beam_size_token=len(tokens),
            beam_threshold=beam_threshold,
            lm_weight=alpha * math.log(10),
            word_score=beta,  # its KenLM scores are log10
            unk_score=unk_score,
            sil_score=0.0,
            log_add=True,
            criterion_type=CriterionType.CTC,
        )
        self.decoder = LexiconDecoder(options, trie, self.lm, BLANK, BLANK, word_dict.get_index("<unk>"), [], False)

    def __call__(self, log_probs: np.ndarray) -> list[str]:
        emissions = np.ascontiguousarray(log_probs, dtype=np.float32)
        T, V = emissions.shape
        best = self.decoder.decode(emissions.ctypes.data, T, V)[0]
        return [self.word_dict.get_entry(w) for w in best.words if w >= 0]
