"""Kaldi chain's phone LM (asrhybrid.chain.phone_lm): without merging, every probability is the relative
frequency of its n-gram counted by brute force; merging keeps the training sequences possible, bounds the
states, and loses training likelihood only as states go."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from asrhybrid.chain.phone_lm import PhoneLmOptions, estimate_phone_lm
from asrhybrid.errors import ConfigError


def _sentences(seed: int, count: int = 300, phones: int = 8) -> list[list[int]]:
    """Phone sequences from a random bigram process (some successors never occur), lengths 1-12."""
    rng = np.random.default_rng(seed)
    successors = {p: rng.choice(np.arange(1, phones + 1), size=3, replace=False) for p in range(phones + 1)}
    out = []
    for _ in range(count):
        seq, prev = [], 0
        for _ in range(int(rng.integers(1, 13))):
            prev = int(rng.choice(successors[prev]))
            seq.append(prev)
        out.append(seq)
    return out


def _relative_frequencies(sentences, order: int) -> dict[tuple, dict[int, float]]:
    """P(next | history) = count(history, next) / count(history) over every n-gram (0 = boundary)."""
    counts: dict[tuple, Counter] = {}
    for s in sentences:
        padded = [0] + s + [0]
        for i in range(1, len(padded)):
            history = tuple(padded[max(0, i - order + 1) : i])
            counts.setdefault(history, Counter())[padded[i]] += 1
    return {h: {p: c / sum(cs.values()) for p, c in cs.items()} for h, cs in counts.items()}


@pytest.mark.parametrize("order", [2, 3, 4])
def test_unmerged_probabilities_are_the_relative_frequencies(order):
    sentences = _sentences(0)
    lm = estimate_phone_lm(sentences, PhoneLmOptions(order, min(order, 3), num_extra_states=10**9))
    expected = _relative_frequencies(sentences, order)
    assert set(lm.histories) == set(expected)  # one state per history seen, nothing else
    arcs = {(lm.histories[s], p): (lm.histories[d], lp) for s, p, d, lp in lm.arcs}
    for history, probs in expected.items():
        for p, prob in probs.items():
            if p == 0:
                assert lm.final[lm.histories.index(history)] == pytest.approx(math.log(prob), abs=1e-12)
            else:
                dest, lp = arcs[history, p]
                assert lp == pytest.approx(math.log(prob), abs=1e-12)
                assert dest == (history + (p,))[-(order - 1) :]
    for s in sentences[:50]:  # a sentence's probability is the product of its n-grams' frequencies
        padded = [0] + s + [0]
        brute = sum(
            math.log(expected[tuple(padded[max(0, i - order + 1) : i])][padded[i]]) for i in range(1, len(padded))
        )
        assert lm.sentence_log_prob(s) == pytest.approx(brute, abs=1e-9)


@pytest.mark.parametrize("extra", [0, 5, 40])
def test_merging_bounds_the_states_and_keeps_every_training_sequence(extra):
    sentences = _sentences(1)
    full = estimate_phone_lm(sentences, PhoneLmOptions(4, 3, num_extra_states=10**9))
    lm = estimate_phone_lm(sentences, PhoneLmOptions(4, 3, num_extra_states=extra))
    # Kaldi's target: every history of two phones (seen, or the suffix of a three-phone one) plus `extra`;
    # the states that may not merge (shorter histories, here only the sentence start) stay in any case
    basic = {h for h in full.histories if len(h) == 2} | {h[1:] for h in full.histories if len(h) == 3}
    unmergeable = len(basic) + sum(1 for h in full.histories if len(h) < 2)
    assert lm.num_states == max(len(basic) + extra, unmergeable)
    assert all(len(h) >= 2 for h in lm.histories if h[0] != 0)  # two-phone histories are never merged
    # each state's arcs and end-of-sentence probability sum to one; the acceptor is deterministic
    mass = Counter()
    seen = set()
    for s, p, _, lp in lm.arcs:
        mass[s] += math.exp(lp)
        assert (s, p) not in seen
        seen.add((s, p))
    for s, lp in lm.final.items():
        mass[s] += math.exp(lp)
    assert all(m == pytest.approx(1.0, abs=1e-9) for m in mass.values()) and len(mass) == lm.num_states
    likelihood = sum(lm.sentence_log_prob(s) for s in sentences)
    assert math.isfinite(likelihood)
    assert likelihood <= sum(full.sentence_log_prob(s) for s in sentences) + 1e-6


def test_fewer_states_lose_likelihood_monotonically_and_the_fst_scores_the_same():
    from asrhybrid.kaldi_wrappers import kaldifst

    sentences = _sentences(2, count=500)
    previous = -math.inf
    for extra in (0, 10, 30, 100, 10**9):
        lm = estimate_phone_lm(sentences, PhoneLmOptions(4, 3, extra))
        likelihood = sum(lm.sentence_log_prob(s) for s in sentences)
        assert likelihood >= previous - 1e-6
        previous = likelihood
    fst = lm.to_fst()  # the FST's cost of a sentence, following its arcs, is -log P
    assert fst.num_states == lm.num_states
    for sentence in sentences[:30]:
        state, cost = fst.start, 0.0
        for p in sentence:
            (arc,) = [a for a in kaldifst.ArcIterator(fst, state) if a.ilabel == p]
            state, cost = arc.nextstate, cost + arc.weight.value
        cost += fst.final(state).value
        assert -cost == pytest.approx(lm.sentence_log_prob(sentence), abs=1e-3)


def test_bad_options_and_input_are_refused():
    with pytest.raises(ConfigError, match="ngram_order"):
        PhoneLmOptions(ngram_order=1)
    with pytest.raises(ConfigError, match="num_extra_states"):
        PhoneLmOptions(num_extra_states=-1)
    with pytest.raises(ValueError, match="phone id 0"):
        estimate_phone_lm([[1, 0, 2]])
    with pytest.raises(ValueError, match="no phone sequences"):
        estimate_phone_lm([])
