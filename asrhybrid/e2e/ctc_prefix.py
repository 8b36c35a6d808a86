"""CTC prefix scores for joint CTC/attention decoding (Watanabe et al. 2017, Algorithm 2).

The CTC prefix probability of a token sequence h is the probability, under the CTC head's per-frame
distributions of one utterance, of every output sequence that starts with h: ``psi(h) = sum over y with prefix
h of p_ctc(y | x)``. It is computed from the prefix g = h[:-1] with two forward variables over the frames,
gamma_n(g)[t] and gamma_b(g)[t]: the probability that frames 1..t collapse to g with frame t on g's last token
(n) or on blank (b). For h = g + c:

    gamma_n(h)[1] = x_1(c) if g is empty else 0;    gamma_b(h)[1] = 0
    phi[t] = gamma_b(g)[t] + (0 if c == last(g) else gamma_n(g)[t])      (a repeat needs a blank between)
    gamma_n(h)[t] = (gamma_n(h)[t-1] + phi[t-1]) x_t(c)
    gamma_b(h)[t] = (gamma_b(h)[t-1] + gamma_n(h)[t-1]) x_t(blank)
    psi(h) = gamma_n(h)[1] + sum_{t >= 2} phi[t-1] x_t(c)

and, for the end of the sentence, psi(g + <eos>) = gamma_n(g)[T] + gamma_b(g)[T] = p_ctc(g | x), the sequence's
full CTC probability. Everything here is in the log domain, and one call extends a prefix by many candidate
tokens at once. A beam search adds ``log psi(h) - log psi(g)`` to a hypothesis as CTC's share of its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asrhybrid.e2e.tokens import BLANK, SOS_EOS


@dataclass
class CtcPrefix:
    """A prefix's forward variables ([T] each, log, float64 numpy) and its log prefix probability."""

    tokens: tuple[int, ...]
    gamma_n: np.ndarray
    gamma_b: np.ndarray
    score: float


class CtcPrefixScorer:
    """Prefix scores over one utterance's CTC log-probabilities ``log_probs`` [T, V] (T >= 1). The recursion
    runs in numpy: its arrays are a few candidates wide, where a torch call's overhead is most of the work."""

    def __init__(self, log_probs: torch.Tensor | np.ndarray, blank: int = BLANK, eos: int = SOS_EOS):
        if log_probs.ndim != 2 or log_probs.shape[0] < 1:
            raise ValueError(f"log_probs of shape {tuple(log_probs.shape)}: [T >= 1, V]")
        if isinstance(log_probs, torch.Tensor):
            log_probs = log_probs.detach().cpu().double().numpy()
        self.log_probs, self.blank, self.eos = np.asarray(log_probs, dtype=np.float64), blank, eos

    def initial(self) -> CtcPrefix:
        """The empty prefix: all blanks so far; its prefix probability is 1."""
        T = self.log_probs.shape[0]
        return CtcPrefix((), np.full(T, -np.inf), np.cumsum(self.log_probs[:, self.blank]), 0.0)

    def extend(self, prefix: CtcPrefix, tokens: list[int]) -> list[CtcPrefix]:
        """``prefix + (c,)`` for every c of ``tokens`` (blank excluded), with its log prefix probability
        (for ``eos``: the prefix's full CTC log-probability)."""
        if self.blank in tokens:
            raise ValueError("the blank is no token of a prefix")
        lp = self.log_probs
        T = lp.shape[0]
        c = np.asarray(tokens, dtype=np.int64)
        x = lp[:, c]  # [T, K]
        last = prefix.tokens[-1] if prefix.tokens else None
        repeat = (c == last)[None] if last is not None else np.zeros((1, len(tokens)), dtype=bool)
        phi = np.where(repeat, prefix.gamma_b[:, None], np.logaddexp(prefix.gamma_b, prefix.gamma_n)[:, None])
        gamma_n = np.full((T, len(tokens)), -np.inf)
        gamma_b = np.full((T, len(tokens)), -np.inf)
        if not prefix.tokens:
            gamma_n[0] = x[0]
        blank = lp[:, self.blank]
        for t in range(1, T):
            gamma_n[t] = np.logaddexp(gamma_n[t - 1], phi[t - 1]) + x[t]
            gamma_b[t] = np.logaddexp(gamma_b[t - 1], gamma_n[t - 1]) + blank[t]
        psi = np.logaddexp.reduce(np.concatenate([gamma_n[:1], phi[:-1] + x[1:]]), axis=0)
        full = float(np.logaddexp(prefix.gamma_n[-1], prefix.gamma_b[-1])) if self.eos in tokens else None
        return [
            CtcPrefix(
                prefix.tokens + (token,), gamma_n[:, k], gamma_b[:, k], full if token == self.eos else float(psi[k])
            )
            for k, token in enumerate(tokens)
        ]
