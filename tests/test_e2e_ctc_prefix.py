"""CTC prefix scores (asrhybrid.e2e.ctc_prefix) against a brute-force sum over every frame path, and full
sequence scores against torch's CTC loss."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from asrhybrid.e2e.ctc_prefix import CtcPrefixScorer
from asrhybrid.e2e.tokens import BLANK, SOS_EOS


def collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(t for i, t in enumerate(path) if t != BLANK and (i == 0 or t != path[i - 1]))


def brute_force(log_probs: np.ndarray) -> dict[tuple[int, ...], float]:
    """Every output sequence's CTC probability, summed path by path over all V^T frame paths."""
    T, V = log_probs.shape
    out: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        y = collapse(path)
        out[y] = out.get(y, 0.0) + math.exp(sum(log_probs[t, s] for t, s in enumerate(path)))
    return out


@pytest.mark.parametrize("T", [1, 2, 5])
def test_prefix_scores_equal_brute_force(T):
    """V = 4 (blank, <sos/eos>, two tokens), every prefix up to length 3 and every extension, repeats
    included: psi(h) is the summed probability of all sequences that start with h; h + <eos> is p(h)."""
    torch.manual_seed(T)
    log_probs = torch.log_softmax(torch.randn(T, 4, dtype=torch.float64), dim=-1)
    sequences = brute_force(log_probs.numpy())
    assert sum(sequences.values()) == pytest.approx(1.0)
    scorer = CtcPrefixScorer(log_probs)
    frontier = [scorer.initial()]
    for _ in range(3):
        grown = []
        for prefix in frontier:
            for ext in scorer.extend(prefix, [SOS_EOS, 2, 3]):
                if ext.tokens[-1] == SOS_EOS:
                    expected = sequences.get(prefix.tokens, 0.0)
                else:
                    expected = sum(p for y, p in sequences.items() if y[: len(ext.tokens)] == ext.tokens)
                    grown.append(ext)
                assert math.exp(ext.score) == pytest.approx(expected, abs=1e-12), ext.tokens
        frontier = grown


def test_full_sequence_scores_equal_torch_ctc_loss():
    torch.manual_seed(0)
    T, V = 40, 7
    log_probs = torch.log_softmax(3 * torch.randn(T, V), dim=-1)
    scorer = CtcPrefixScorer(log_probs)
    for label in ([2, 3, 3, 4], [6], [2, 2, 2, 5, 6, 2, 3]):
        prefix = scorer.initial()
        for token in label:
            (prefix,) = scorer.extend(prefix, [token])
        (end,) = scorer.extend(prefix, [SOS_EOS])
        loss = torch.nn.functional.ctc_loss(
            log_probs[:, None].double(),
            torch.tensor([label]),
            torch.tensor([T]),
            torch.tensor([len(label)]),
            blank=BLANK,
            reduction="sum",
        )
        assert end.score == pytest.approx(-float(loss), rel=1e-9)
        assert end.score <= prefix.score  # a sequence is one of those its prefix starts


def test_blank_is_no_token():
    scorer = CtcPrefixScorer(torch.log_softmax(torch.randn(3, 4), dim=-1))
    with pytest.raises(ValueError, match="blank"):
        scorer.extend(scorer.initial(), [BLANK])
