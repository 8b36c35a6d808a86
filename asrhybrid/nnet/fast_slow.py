"""The Fast/Slow acoustic model (Interspeech 2020): a deep slow encoder that never looks ahead, and a small fast
acoustic model whose outputs for the next ``lookahead`` frames are brought back to the slow encoder's time base.

    slow   s_t = LSTMP(x_0..x_t)                              (deep; no look-ahead)
    fast   a_t = act(W_2 relu(W_1 x_t) + b_2)                 (act: softmax, sigmoid or none of the linear layer)
    fast encoder  f_t = F([a_{t+1}, ..., a_{t+k}])            (the fast outputs of the k future frames)
    joint  y_t = softmax(J [s_t ; f_t])                       (input 2 x hidden)

So output t depends on frames 0..t+k and on none later: exactly ``lookahead``
frames of latency, against the LSTMP's ``delay``. :class:`SlowAM` is the slow
encoder alone (the same encoder and joint layer, no fast path, no look-ahead):
what the fast path is measured against. Sizes: the fast AM is 3-4x
smaller than the slow encoder (the defaults at 80-dim fbank and 800
senones: 225k multiply-adds per frame against 836k); the fast encoder reads
k x num_pdfs inputs, so it costs more than either as the senones grow.
"""

from __future__ import annotations

import torch
from torch import nn


class FastSlowAM(nn.Module):
    """Fbank frames [B, T, D] -> pdf logits [B, T, num_pdfs], output t hearing frames up to t + ``lookahead``."""

    def __init__(
        self,
        feat_dim: int,
        num_pdfs: int,
        hidden: int = 256,
        slow_layers: int = 3,
        fast_hidden: int = 256,
        lookahead: int = 5,
        fast_output: str = "softmax",
        fast: bool = True,
    ):
        super().__init__()
        if fast_output not in ("softmax", "sigmoid", "logits"):
            raise ValueError(f"fast_output '{fast_output}': softmax, sigmoid or logits")
        if fast and lookahead < 1:
            raise ValueError("the fast model looks at least one frame ahead")
        self.lookahead, self.fast_output, self.use_fast = (lookahead if fast else 0), fast_output, fast
        self.slow = nn.LSTM(feat_dim, hidden, num_layers=slow_layers, proj_size=hidden // 2, batch_first=True)
        self.slow_out = nn.Linear(hidden // 2, hidden)
        if fast:
            self.fast = nn.Sequential(nn.Linear(feat_dim, fast_hidden), nn.ReLU(), nn.Linear(fast_hidden, num_pdfs))
            self.fast_encoder = nn.Linear(lookahead * num_pdfs, hidden)
        self.joint = nn.Sequential(nn.ReLU(), nn.Linear((2 if fast else 1) * hidden, num_pdfs))

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        if self.fast_output == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits) if self.fast_output == "sigmoid" else logits

    @property
    def right_context(self) -> int:
        return self.lookahead

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_with_fast(feats)[0]

    def forward_with_fast(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(joint logits, the fast AM's own logits): the trainer gives the fast AM its own cross-entropy too
        (TrainConfig.fast_weight), so its outputs stay senone scores for the fast encoder to read."""
        B, T, _ = feats.shape
        slow = self.slow_out(self.slow(feats)[0])
        if not self.use_fast:
            return self.joint(slow), None
        fast_logits = self.fast(feats)
        a = self._activate(fast_logits)
        k = self.lookahead
        # a_{t+1..t+k}: the end padded with the last frame's output (utterances end; nothing is invented)
        padded = torch.cat([a[:, 1:], a[:, -1:].expand(-1, k, -1)], dim=1)  # [B, T + k - 1, C]
        ahead = padded.unfold(1, k, 1)[:, :T]  # [B, T, C, k]: frames t+1..t+k
        fast = self.fast_encoder(ahead.transpose(2, 3).reshape(B, T, -1))
        return self.joint(torch.cat([slow, fast], dim=-1)), fast_logits


class SlowAM(FastSlowAM):
    """The Fast/Slow model's slow encoder and joint layer alone: no fast path, no look-ahead."""

    def __init__(self, feat_dim: int, num_pdfs: int, hidden: int = 256, slow_layers: int = 3):
        super().__init__(feat_dim, num_pdfs, hidden=hidden, slow_layers=slow_layers, fast=False)
