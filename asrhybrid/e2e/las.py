"""Listen, Attend and Spell (Chan 2015).

- Listener: a BLSTM over the frames, then ``pyramid`` pyramidal BLSTM layers, each reading pairs of
  consecutive outputs of the layer below concatenated (time halved: 3 layers give the paper's 8x).
- Attention: e_u = <phi(s_i), psi(h_u)> with phi and psi one-layer MLPs (the paper's), a softmax over the
  utterance's encodings (padding masked), the context the weighted sum.
- Speller: ``speller_layers`` LSTM layers (the paper's 2) reading the previous token and the previous
  context; the token distribution from an MLP of the state and the new context. Tokens are stage 3's;
  ``<sos/eos>`` (id 1) starts and ends every transcript; blank (0) is never predicted.
- Training: teacher forcing, with the previous token replaced by the model's own sample at rate
  ``sampling_rate`` (the paper's scheduled sampling, 10%); cross-entropy per token, ``<sos/eos>`` included.
- Search: beam search, a hypothesis finished at ``<sos/eos>``; the n-best rescored with the paper's length
  normalisation s = log P(y|x) / |y| + lambda log P_lm(y) (a word LM through KenLM).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asrhybrid.e2e.objective import TokenObjective
from asrhybrid.e2e.tokens import BLANK, SOS_EOS


def _blstm(module: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = module(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


class Listener(nn.Module):
    def __init__(self, feat_dim: int, hidden: int = 256, pyramid: int = 3):
        super().__init__()
        self.first = nn.LSTM(feat_dim, hidden, batch_first=True, bidirectional=True)
        self.pyramid = nn.ModuleList(nn.LSTM(4 * hidden, hidden, batch_first=True, bidirectional=True)
                                     for _ in range(pyramid))
        self.output_dim = 2 * hidden

    def output_frames(self, num_frames: int) -> int:
        for _ in self.pyramid:
            num_frames = (num_frames + 1) // 2
        return num_frames

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _blstm(self.first, feats, lengths)
        for layer in self.pyramid:
            if h.shape[1] % 2:  # an odd last frame is paired with itself
                h = torch.cat([h, h[:, -1:]], dim=1)
            B, T, D = h.shape
            h = h.reshape(B, T // 2, 2 * D)
            lengths = (lengths + 1) // 2
            h = _blstm(layer, h, lengths)
        return h, lengths


class DotAttention(nn.Module):
    """e_u = <phi(s), psi(h_u)>, softmax over the unpadded u."""

    def __init__(self, state_dim: int, enc_dim: int, dim: int = 128):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(state_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.psi = nn.Sequential(nn.Linear(enc_dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.psi(enc)

    def forward(self, state: torch.Tensor, keys: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor):
        """(context [B, C], weights [B, U]) of states [B, S] over encodings [B, U, C] (mask: True on real u)."""
        energy = torch.einsum("bd,bud->bu", self.phi(state), keys).masked_fill(~mask, -math.inf)
        weights = torch.softmax(energy, dim=-1)
        return torch.einsum("bu,buc->bc", weights, enc), weights


class LAS(nn.Module):
    def __init__(self, feat_dim: int, num_tokens: int, listener_hidden: int = 256, pyramid: int = 3,
                 speller_hidden: int = 256, speller_layers: int = 2, embed_dim: int = 128, attention_dim: int = 128,
                 sampling_rate: float = 0.1, max_output_ratio: float = 1.5):
        super().__init__()
        self.listener = Listener(feat_dim, listener_hidden, pyramid)
        enc = self.listener.output_dim
        self.embed = nn.Embedding(num_tokens, embed_dim)
        self.speller = nn.LSTM(embed_dim + enc, speller_hidden, num_layers=speller_layers, batch_first=True)
        self.attention = DotAttention(speller_hidden, enc, attention_dim)
        self.output = nn.Sequential(nn.Linear(speller_hidden + enc, speller_hidden), nn.Tanh(),
                                    nn.Linear(speller_hidden, num_tokens))
        self.sampling_rate, self.max_output_ratio, self.num_tokens = sampling_rate, max_output_ratio, num_tokens

    def output_frames(self, num_frames: int) -> int:
        return self.listener.output_frames(num_frames)

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor):
        enc, enc_lens = self.listener(feats, lengths)
        mask = torch.arange(enc.shape[1], device=enc.device)[None] < enc_lens[:, None]
        return enc, enc_lens, mask

    def step(self, token: torch.Tensor, context: torch.Tensor, state, enc, keys, mask):
        """One speller step: (log-probabilities [B, V], new context, new state, attention weights)."""
        out, state = self.speller(torch.cat([self.embed(token), context], dim=-1)[:, None], state)
        s = out[:, 0]
        context, weights = self.attention(s, keys, enc, mask)
        logits = self.output(torch.cat([s, context], dim=-1)).float()
        logits[:, BLANK] = -math.inf  # never predicted
        return torch.log_softmax(logits, dim=-1), context, state, weights

    def loss(self, feats: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]]) -> tuple[torch.Tensor, int]:
        """(summed cross-entropy over the tokens and the final <sos/eos>, their count)."""
        enc, _, mask = self.encode(feats, lengths)
        keys = self.attention.keys(enc)
        B, U = len(labels), max(len(y) for y in labels) + 1
        targets = torch.full((B, U), -100, dtype=torch.int64, device=feats.device)
        for i, y in enumerate(labels):
            targets[i, : len(y) + 1] = torch.tensor(y + [SOS_EOS], dtype=torch.int64)
        token = torch.full((B,), SOS_EOS, dtype=torch.int64, device=feats.device)
        context = enc.new_zeros(B, enc.shape[-1])
        state, total = None, feats.new_zeros((), dtype=torch.float32)
        for u in range(U):
            log_probs, context, state, _ = self.step(token, context, state, enc, keys, mask)
            total = total + nn.functional.nll_loss(log_probs, targets[:, u], ignore_index=-100, reduction="sum")
            teacher = targets[:, u].clamp(min=0)
            if self.training and self.sampling_rate > 0:  # scheduled sampling: the model's own token at a rate
                sampled = torch.multinomial(log_probs.detach().exp(), 1)[:, 0]
                use = torch.rand(B, device=feats.device) < self.sampling_rate
                teacher = torch.where(use, sampled, teacher)
            token = teacher
        return total, int((targets >= 0).sum())

    def beam_search(self, enc: torch.Tensor, beam: int = 4, nbest: int = 1) -> list[tuple[list[int], float]]:
        """(tokens, log P(y|x)) of the best finished hypotheses, best first, for one utterance's encodings
        [U, C]; hypotheses end at <sos/eos> or at max_output_ratio x U + 5 tokens."""
        enc, mask = enc[None], torch.ones(1, enc.shape[0], dtype=torch.bool, device=enc.device)
        keys = self.attention.keys(enc)
        live = [([], 0.0, SOS_EOS, enc.new_zeros(1, enc.shape[-1]), None)]
        finished: list[tuple[list[int], float]] = []
        for _ in range(int(self.max_output_ratio * enc.shape[1]) + 5):
            candidates = []
            for tokens, score, last, context, state in live:
                lp, ctx, st, _ = self.step(torch.tensor([last], device=enc.device), context, state, enc, keys, mask)
                top = torch.topk(lp[0], min(beam, self.num_tokens - 1))
                for v, t in zip(top.values.tolist(), top.indices.tolist()):
                    candidates.append((tokens, score + v, t, ctx, st))
            candidates.sort(key=lambda c: -c[1])
            live = []
            for tokens, score, t, ctx, st in candidates:
                if t == SOS_EOS:
                    finished.append((tokens, score))
                elif len(live) < beam:
                    live.append((tokens + [t], score, t, ctx, st))
            if len(finished) >= nbest and (not live or max(f[1] for f in finished) >= live[0][1]):
                break  # no live hypothesis can beat the best finished one (scores only fall)
        finished += [(tokens, score) for tokens, score, *_ in live] if not finished else []
        return sorted(finished, key=lambda f: -f[1])[:nbest]


def greedy_las(model: LAS, enc: torch.Tensor) -> list[int]:
    """The most likely token at every step until <sos/eos>."""
    enc, mask = enc[None], torch.ones(1, enc.shape[0], dtype=torch.bool, device=enc.device)
    keys = model.attention.keys(enc)
    token, context, state, out = SOS_EOS, enc.new_zeros(1, enc.shape[-1]), None, []
    for _ in range(int(model.max_output_ratio * enc.shape[1]) + 5):
        lp, context, state, _ = model.step(torch.tensor([token], device=enc.device), context, state, enc, keys, mask)
        token = int(lp[0].argmax())
        if token == SOS_EOS:
            break
        out.append(token)
    return out


def rescore_nbest(nbest: list[tuple[list[int], float]], words_of, lm=None, lm_weight: float = 0.0) -> list[int]:
    """The paper's n-best rescoring: the hypothesis maximising log P(y|x) / |y| + lambda log P_lm(words(y))
    (|y| counts <sos/eos>; the LM's natural-log sentence probability, </s> included)."""
    def score(item):
        tokens, log_p = item
        s = log_p / (len(tokens) + 1)
        if lm is not None and lm_weight:
            state, cost = lm.start(), 0.0
            for w in words_of(tokens):
                c, state = lm.step_word(state, w)
                cost += c
            s -= lm_weight * (cost + lm.end(state))
        return s

    return max(nbest, key=score)[0] if nbest else []


class LasObjective(TokenObjective):
    """LAS cross-entropy (asrhybrid.e2e.objective); ``count`` is tokens, <sos/eos> included."""

    loss_name, count_name = "ce", "tokens"

    def loss(self, model: LAS, feats: torch.Tensor, lens: torch.Tensor, labels: list[list[int]]):
        loss, count = model.loss(feats, lens, labels)
        return loss, count, (feats, lens)

    def greedy(self, model: LAS, outputs) -> list[list[int]]:
        enc, enc_lens, _ = model.encode(*outputs)
        return [greedy_las(model, e[: int(n)]) for e, n in zip(enc, enc_lens)]
