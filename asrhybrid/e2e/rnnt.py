"""RNN-T (Graves 2012) with a ContextNet encoder (Han 2020), a one-layer LSTM label encoder and a joint network;
losses from k2, greedy search and icefall's modified beam search with optional word n-gram fusion.

ContextNet: a stack of blocks, each of 1-D depthwise-separable convolutions (depthwise kernel ``kernel``,
then pointwise) with batch norm and swish, closed by squeeze-and-excitation (the time average, through two
linear layers and a sigmoid, gates the channels; padded frames are left out of the average) and added to a
pointwise projection of the block's input (the residual). ``strides`` of 2 in three blocks give the 8x
downsampling; ``alpha`` multiplies every width. The paper's C0..C22 is ``blocks=23``, ``layers=5``.

Losses (``loss``): ``full``, k2.rnnt_loss over every (frame, label) pair of the joint network's output; or
``pruned`` (the default, icefall's): a "simple" loss of encoder and label-encoder projections added (no
joint network: cheap on all pairs) gives through its gradients the ``prune_range`` labels each frame is
likely to be on, and the joint network runs only there (k2.rnnt_loss_pruned); the loss is
``simple_scale`` x simple + pruned. Blank is token 0 (k2's termination symbol). With ``ctc_scale`` > 0 (icefall's
``--ctc-loss-scale``, 0.2 there) a CTC head, one linear layer on the encoder's output, adds that share of its
summed CTC loss (the same blank).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from asrhybrid.e2e.ctc import summed_ctc_loss
from asrhybrid.e2e.objective import TokenObjective
from asrhybrid.e2e.tokens import BLANK


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, max(1, channels // reduction)),
            nn.SiLU(),
            nn.Linear(max(1, channels // reduction), channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, C, T], mask [B, 1, T] (1 on real frames)."""
        mean = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return x * self.fc(mean).unsqueeze(-1)


class ContextNetBlock(nn.Module):
    def __init__(
        self,
        c_in: int,
        c_out: int,
        layers: int,
        kernel: int,
        stride: int,
        residual: bool = True,
        padding: str = "zeros",
    ):
        super().__init__()
        convs = []
        for i in range(layers):
            c = c_in if i == 0 else c_out
            s = stride if i == layers - 1 else 1  # the block's last layer strides (the paper's choice)
            convs.append(
                nn.ModuleList(
                    [
                        nn.Conv1d(c, c, kernel, stride=s, padding=kernel // 2, groups=c, padding_mode=padding),
                        nn.Conv1d(c, c_out, 1),
                        nn.BatchNorm1d(c_out),
                    ]
                )
            )
        self.convs = nn.ModuleList(convs)
        self.se = SqueezeExcite(c_out)
        self.residual = (
            nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride), nn.BatchNorm1d(c_out)) if residual else None
        )
        self.stride = stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp, out_lens = x, lengths
        for depthwise, pointwise, norm in self.convs:
            x = nn.functional.silu(norm(pointwise(depthwise(x))))
        if self.stride > 1:
            out_lens = (lengths + self.stride - 1) // self.stride
        mask = (torch.arange(x.shape[-1], device=x.device)[None] < out_lens[:, None]).unsqueeze(1).to(x.dtype)
        x = self.se(x, mask)
        if self.residual is not None:
            x = x + self.residual(inp)
        return nn.functional.silu(x), out_lens


class ContextNet(nn.Module):
    """Fbank [B, T, D] -> encodings [B, T', C] with T' = ceil(T / 8) (three stride-2 blocks). ``padding``:
    the depthwise convolutions' padding at the utterance's edges, zeros (the paper's) or replicate (the edge
    frame repeated: the edges look like more of what is there, so the encoder cannot find them by the padding)."""

    def __init__(
        self,
        feat_dim: int,
        channels: int = 256,
        blocks: int = 7,
        layers: int = 3,
        kernel: int = 5,
        alpha: float = 1.0,
        out_channels: int | None = None,
        stride_blocks: tuple[int, ...] | None = None,
        padding: str = "zeros",
    ):
        super().__init__()
        if padding not in ("zeros", "replicate"):
            raise ValueError(f"padding '{padding}': zeros or replicate")
        width = max(8, int(round(channels * alpha)))
        strides = set(stride_blocks if stride_blocks is not None else (1, blocks // 3 + 1, 2 * blocks // 3 + 1))
        specs = []
        for i in range(blocks):
            first, last = i == 0, i == blocks - 1
            specs.append(
                (
                    feat_dim if first else width,
                    int(round((out_channels or channels) * alpha)) if last else width,
                    1 if first or last else layers,
                    2 if i in strides else 1,
                    not first,
                )
            )
        self.blocks = nn.ModuleList(ContextNetBlock(a, b, n, kernel, s, r, padding) for a, b, n, s, r in specs)
        self.output_dim = specs[-1][1]
        self.subsampling = 2 ** sum(s == 2 for *_, s, _ in specs)

    def output_frames(self, num_frames: int) -> int:
        n = num_frames
        for block in self.blocks:
            n = (n + block.stride - 1) // block.stride
        return n

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = feats.transpose(1, 2)
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


class RnnTransducer(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        num_tokens: int,
        channels: int = 256,
        blocks: int = 7,
        layers: int = 3,
        kernel: int = 5,
        alpha: float = 1.0,
        pred_dim: int = 256,
        joint_dim: int = 256,
        loss: str = "pruned",
        prune_range: int = 5,
        simple_scale: float = 0.5,
        smooth_scale: float = 0.1,
        ctc_scale: float = 0.0,
        padding: str = "zeros",
    ):
        super().__init__()
        if loss not in ("pruned", "full"):
            raise ValueError(f"loss '{loss}': pruned or full")
        if ctc_scale < 0:
            raise ValueError(f"ctc_scale {ctc_scale}: at least 0")
        self.encoder = ContextNet(feat_dim, channels, blocks, layers, kernel, alpha, padding=padding)
        self.embed = nn.Embedding(num_tokens, pred_dim)
        self.predictor = nn.LSTM(pred_dim, pred_dim, batch_first=True)
        self.enc_proj = nn.Linear(self.encoder.output_dim, joint_dim)
        self.pred_proj = nn.Linear(pred_dim, joint_dim)
        self.joint_out = nn.Linear(joint_dim, num_tokens)
        self.simple_am = nn.Linear(self.encoder.output_dim, num_tokens)
        self.simple_lm = nn.Linear(pred_dim, num_tokens)
        self.loss_kind, self.prune_range, self.simple_scale, self.smooth_scale = (
            loss,
            prune_range,
            simple_scale,
            smooth_scale,
        )
        self.num_tokens = num_tokens
        self.ctc_scale = ctc_scale
        self.ctc = nn.Linear(self.encoder.output_dim, num_tokens) if ctc_scale > 0 else None

    def output_frames(self, num_frames: int) -> int:
        return self.encoder.output_frames(num_frames)

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(feats, lengths)

    def predict(self, tokens: torch.Tensor, state=None) -> tuple[torch.Tensor, tuple]:
        """Label-encoder outputs [B, U, P] of token ids [B, U] (blank first: the start symbol)."""
        out, state = self.predictor(self.embed(tokens), state)
        return out, state

    def joint(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Logits of projected encodings and label encodings broadcast against each other."""
        return self.joint_out(torch.tanh(enc + pred))

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """The terms :meth:`loss` reports apart: the transducer's and the CTC head's (a model with one)."""
        return ("transducer", "ctc") if self.ctc is not None else ()

    def loss(self, feats: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]]):
        """(summed RNN-T loss, plus ``ctc_scale`` x the CTC head's summed loss; encoder output lengths; the
        terms apart, unscaled, for :attr:`loss_parts`)."""
        enc, enc_lens = self.encode(feats, lengths)
        loss = self._transducer_loss(enc, enc_lens, labels)
        if self.ctc is None:
            return loss, enc_lens, {}
        ctc = summed_ctc_loss(torch.log_softmax(self.ctc(enc).float(), dim=-1), enc_lens, labels)
        return loss + self.ctc_scale * ctc, enc_lens, {"transducer": loss, "ctc": ctc}

    def _transducer_loss(self, enc: torch.Tensor, enc_lens: torch.Tensor, labels: list[list[int]]) -> torch.Tensor:
        """The summed transducer loss (``loss``: full or pruned) of encodings [B, T, C]."""
        import k2  # k2 is built from source (make setup); a CTC-only install trains without it

        B, U = len(labels), max(len(y) for y in labels)
        symbols = torch.zeros(B, U, dtype=torch.int64, device=enc.device)
        for i, y in enumerate(labels):
            symbols[i, : len(y)] = torch.tensor(y, dtype=torch.int64)
        pred_in = torch.cat([torch.full((B, 1), BLANK, dtype=torch.int64, device=enc.device), symbols], dim=1)
        pred, _ = self.predict(pred_in)
        boundary = torch.zeros(B, 4, dtype=torch.int64, device=enc.device)
        boundary[:, 2] = torch.tensor([len(y) for y in labels], device=enc.device)
        boundary[:, 3] = enc_lens
        enc, pred = enc.float(), pred.float()
        if self.loss_kind == "full":
            logits = self.joint(self.enc_proj(enc)[:, :, None], self.pred_proj(pred)[:, None])
            return k2.rnnt_loss(logits.float(), symbols, BLANK, boundary, reduction="sum")
        simple, (px_grad, py_grad) = k2.rnnt_loss_smoothed(
            lm=self.simple_lm(pred),
            am=self.simple_am(enc),
            symbols=symbols,
            termination_symbol=BLANK,
            lm_only_scale=self.smooth_scale,
            am_only_scale=self.smooth_scale,
            boundary=boundary,
            reduction="sum",
            return_grad=True,
        )
        ranges = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, min(self.prune_range, U + 1))
        am_pruned, lm_pruned = k2.do_rnnt_pruning(am=self.enc_proj(enc), lm=self.pred_proj(pred), ranges=ranges)
        logits = self.joint(am_pruned, lm_pruned)
        pruned = k2.rnnt_loss_pruned(logits.float(), symbols, ranges, BLANK, boundary, reduction="sum")
        return self.simple_scale * simple + pruned


def rnnt_greedy(model: RnnTransducer, enc: torch.Tensor, max_symbols: int = 5, blank_penalty: float = 0.0) -> list[int]:
    """Greedy search over one utterance's encodings [T, C]: at each frame, emit the best token until blank
    (at most ``max_symbols`` a frame), blank's logit lowered by ``blank_penalty``."""
    enc = model.enc_proj(enc)
    hyp: list[int] = []
    pred, state = model.predict(torch.tensor([[BLANK]], device=enc.device))
    for t in range(enc.shape[0]):
        for _ in range(max_symbols):
            logits = model.joint(enc[t], model.pred_proj(pred[0, -1]))
            logits[BLANK] -= blank_penalty
            token = int(logits.argmax())
            if token == BLANK:
                break
            hyp.append(token)
            pred, state = model.predict(torch.tensor([[token]], device=enc.device), state)
    return hyp


def modified_beam_search(
    model: RnnTransducer,
    enc: torch.Tensor,
    beam: int = 4,
    fusion=None,
    max_symbols: int = 1,
    blank_penalty: float = 0.0,
) -> list[int]:
    """icefall's modified beam search: hypotheses with the same tokens merge (their probabilities added), at
    most ``max_symbols`` tokens a frame (icefall's: 1; more for character tokens over 8x-subsampled frames, where
    a word can have more tokens than frames). With ``fusion`` (asrhybrid.e2e.search.WordFusion) a word's LM
    score and bonus join a hypothesis when its next word starts, and the last word's at the end. Blank's logit
    is lowered by ``blank_penalty`` before the softmax (sherpa's remedy for a transducer that deletes)."""
    enc = model.enc_proj(enc)
    start_pred, start_state = model.predict(torch.tensor([[BLANK]], device=enc.device))
    # tokens: (acoustic log prob, label-encoder output, state)
    hyps: dict[tuple[int, ...], tuple[float, torch.Tensor, tuple]] = {(): (0.0, start_pred[0, -1], start_state)}

    def fused(tokens):
        return fusion.partial_score(tokens) if fusion is not None else 0.0

    def extend(frontier, frame):
        """(hypotheses ending the frame with blank, hypotheses that emitted a token) of one expansion round."""
        keys = list(frontier)
        preds = torch.stack([model.pred_proj(frontier[k][1]) for k in keys])
        logits = model.joint(frame[None], preds).float()
        logits[:, BLANK] -= blank_penalty
        log_probs = torch.log_softmax(logits, dim=-1)
        ended: dict[tuple[int, ...], float] = {}
        emitted: dict[tuple[int, ...], float] = {}
        for k, lp in zip(keys, log_probs):
            score = frontier[k][0]
            ended[k] = float(np.logaddexp(ended.get(k, -math.inf), score + float(lp[BLANK])))
            top = torch.topk(lp, min(beam + 1, lp.shape[0]))
            for v, token in zip(top.values.tolist(), top.indices.tolist()):
                if token != BLANK:
                    grown = k + (token,)
                    emitted[grown] = float(np.logaddexp(emitted.get(grown, -math.inf), score + v))
        return ended, emitted

    def states(scores, known):
        """The best ``beam`` of ``scores`` with their label-encoder outputs: the new ones (a known hypothesis
        and one token) through one batched label-encoder step."""
        best = sorted(scores, key=lambda k: scores[k] + fused(k), reverse=True)[:beam]
        new = [k for k in best if k not in known]
        if new:
            h, c = (torch.cat([known[k[:-1]][2][i] for k in new], dim=1) for i in (0, 1))
            pred, (h, c) = model.predict(torch.tensor([[k[-1]] for k in new], device=enc.device), (h, c))
            known = {**known, **{k: (None, pred[i, -1], (h[:, i : i + 1], c[:, i : i + 1])) for i, k in enumerate(new)}}
        return {k: (scores[k], known[k][1], known[k][2]) for k in best}

    for t in range(enc.shape[0]):
        frame_end: dict[tuple[int, ...], float] = {}
        frontier, known = hyps, dict(hyps)
        for round_ in range(max_symbols):
            ended, emitted = extend(frontier, enc[t])
            if round_ > 0:  # a hypothesis that emitted this frame ends it with a blank
                for k, v in ended.items():
                    frame_end[k] = float(np.logaddexp(frame_end.get(k, -math.inf), v))
            if round_ == max_symbols - 1:  # its last tokens end the frame (the next frame reads them)
                for k, v in emitted.items():
                    frame_end[k] = float(np.logaddexp(frame_end.get(k, -math.inf), v))
            if round_ == 0:
                for k, v in ended.items():
                    frame_end[k] = float(np.logaddexp(frame_end.get(k, -math.inf), v))
            if round_ < max_symbols - 1:
                frontier = states(emitted, known)
                known.update(frontier)
        hyps = states(frame_end, known)
    final = {k: v[0] + (fusion.final_score(k) if fusion is not None else 0.0) for k, v in hyps.items()}
    return list(max(final, key=final.get))


def brute_force_rnnt_log_prob(log_probs: np.ndarray, labels: list[int]) -> float:
    """The reference for tiny cases: log of the sum over every alignment of ``labels`` through [T, U+1, V]
    joint-network log-probabilities (symbols keep the frame, blank moves to the next; the last step is a
    blank out of the last frame), the alignments enumerated one by one."""
    T, U = log_probs.shape[0], len(labels)
    total = -math.inf
    for positions in itertools.combinations(range(T + U - 1), U):  # where the symbols go among the steps
        t = u = 0
        score = 0.0
        chosen = set(positions)
        for step in range(T + U - 1):
            if step in chosen:
                score += log_probs[t, u, labels[u]]
                u += 1
            else:
                score += log_probs[t, u, BLANK]
                t += 1
        score += log_probs[T - 1, U, BLANK]
        total = float(np.logaddexp(total, score))
    return total


class RnntObjective(TokenObjective):
    """The RNN-T loss (asrhybrid.e2e.objective); ``count`` is input frames."""

    loss_name, count_name = "rnnt", "frames"

    def loss(self, model: RnnTransducer, feats: torch.Tensor, lens: torch.Tensor, labels: list[list[int]]):
        loss, _, parts = model.loss(feats, lens, labels)
        return loss, int(lens.sum()), (feats, lens), parts

    def greedy(self, model: RnnTransducer, outputs) -> list[list[int]]:
        enc, enc_lens = model.encode(*outputs)
        return [rnnt_greedy(model, e[: int(n)]) for e, n in zip(enc, enc_lens)]
