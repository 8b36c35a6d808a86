"""Deep Speech (Hannun 2014) with the CTC loss.

Frames are spliced with ``context`` frames each side (the paper's C in 5..9) and strided by ``stride`` (Deep
Speech 2's step: the output rate halves, so the recurrence runs half as long); three non-recurrent layers
with clipped ReLU g(z) = min(max(z, 0), 20); one bidirectional recurrent layer whose two directions are
summed (the paper's h_f + h_b; ``rnn`` picks LSTM, GRU or the paper's plain clipped-ReLU RNN, or ``none``:
no recurrence, a feed-forward CTC model whose context is the splice, like icefall's TDNN-CTC); one more
non-recurrent layer; a log-softmax over the tokens. Dropout (the paper's 5-10%) on the non-recurrent layers.
``norm: layer`` puts a LayerNorm before each clipped ReLU (Deep Speech 2 normalises its layers, with batch
norm): without it, on synth's hour of speech, the layers' outputs grew until most units sat at 0 or at the
clip of 20, where no gradient passes, and the model stayed at CTC's all-blank output.
"""

from __future__ import annotations

import torch
from torch import nn

from asrhybrid.e2e.objective import TokenObjective
from asrhybrid.e2e.rnn import bidirectional
from asrhybrid.e2e.tokens import BLANK


class ClippedReLU(nn.Module):
    def __init__(self, clip: float = 20.0):
        super().__init__()
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, self.clip)


def splice_batch(feats: torch.Tensor, context: int) -> torch.Tensor:
    """[B, T, D] -> [B, T, (2c+1) D], edge frames repeated (per batch: padding is already the last frame)."""
    if context == 0:
        return feats
    padded = torch.cat([feats[:, :1].expand(-1, context, -1), feats, feats[:, -1:].expand(-1, context, -1)], dim=1)
    B, T, D = feats.shape
    return padded.unfold(1, 2 * context + 1, 1).transpose(2, 3).reshape(B, T, -1)


class DeepSpeech(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        num_tokens: int,
        hidden: int = 512,
        rnn_hidden: int | None = None,
        context: int = 5,
        stride: int = 2,
        rnn: str = "lstm",
        dropout: float = 0.1,
        clip: float = 20.0,
        norm: str = "none",
    ):
        super().__init__()
        if rnn not in ("lstm", "gru", "rnn", "none"):
            raise ValueError(f"rnn '{rnn}': lstm, gru, rnn or none")
        if norm not in ("none", "layer"):
            raise ValueError(f"norm '{norm}': none or layer")

        def normed(n: int) -> list[nn.Module]:
            return [nn.LayerNorm(n)] if norm == "layer" else []

        if stride < 1 or context < 0 or not 0 <= dropout < 1:
            raise ValueError("stride >= 1, context >= 0, dropout in [0, 1)")
        self.context, self.stride = context, stride
        rnn_hidden = rnn_hidden or hidden
        layers: list[nn.Module] = []
        for a in (feat_dim * (2 * context + 1), hidden, hidden):
            layers += [nn.Linear(a, hidden), *normed(hidden), ClippedReLU(clip), nn.Dropout(dropout)]
        self.front = nn.Sequential(*layers)
        self.rnn = None
        if rnn != "none":
            kind = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[rnn]
            extra = {"nonlinearity": "relu"} if rnn == "rnn" else {}
            self.rnn = kind(hidden, rnn_hidden, batch_first=True, bidirectional=True, **extra)
        self.clip_rnn = rnn == "rnn"  # the paper's recurrent layer is clipped too
        self.back = nn.Sequential(
            nn.Linear(rnn_hidden if self.rnn is not None else hidden, hidden),
            *normed(hidden),
            ClippedReLU(clip),
            nn.Dropout(dropout),
        )
        self.output = nn.Linear(hidden, num_tokens)
        self.clip = clip

    def output_frames(self, num_frames: int) -> int:
        return (num_frames + self.stride - 1) // self.stride

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities [B, T', V], output lengths [B]) of padded features [B, T, D]."""
        x = splice_batch(feats, self.context)[:, :: self.stride]
        out_lens = (lengths + self.stride - 1) // self.stride
        h = self.front(x)
        if self.rnn is not None:
            h = bidirectional(self.rnn, h, out_lens)
            h = h[..., : h.shape[-1] // 2] + h[..., h.shape[-1] // 2 :]  # h_f + h_b
            if self.clip_rnn:
                h = h.clamp(max=self.clip)
        return torch.log_softmax(self.output(self.back(h)).float(), dim=-1), out_lens


def greedy_ctc(log_probs: torch.Tensor, length: int) -> list[int]:
    """Best token per frame, repeats merged, blanks dropped."""
    best = log_probs[:length].argmax(-1).tolist()
    return [t for i, t in enumerate(best) if t != BLANK and (i == 0 or t != best[i - 1])]


def summed_ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
    """The CTC loss of padded log-probabilities [B, T, V] over token sequences, summed over the batch (blank 0;
    an impossible alignment counts 0 rather than infinity)."""
    targets = torch.tensor([t for label in labels for t in label], dtype=torch.long, device=log_probs.device)
    target_lens = torch.tensor([len(label) for label in labels], device=log_probs.device)
    return nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, out_lens, target_lens, blank=BLANK, reduction="sum", zero_infinity=True
    )


class CtcObjective(TokenObjective):
    """The CTC loss of a Deep Speech model (asrhybrid.e2e.objective); ``count`` is output frames."""

    loss_name, count_name = "ctc", "frames"

    def loss(self, model: nn.Module, feats: torch.Tensor, lens: torch.Tensor, labels: list[list[int]]):
        log_probs, out_lens = model(feats, lens)
        return summed_ctc_loss(log_probs, out_lens, labels), int(out_lens.sum()), (log_probs, out_lens), {}

    def greedy(self, model: nn.Module, outputs) -> list[list[int]]:
        log_probs, out_lens = outputs
        return [greedy_ctc(lp, int(n)) for lp, n in zip(log_probs.detach().cpu(), out_lens.cpu())]
