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

Joint CTC/attention (Kim, Hori, Watanabe 2017; ESPnet's): with ``ctc_weight`` lambda > 0 a CTC head (one linear
layer) reads the listener's output and the loss is lambda CTC + (1 - lambda) cross-entropy (default 0.3,
espnet2's); lambda = 0 is the paper's LAS. ``attention: location`` swaps the paper's dot attention for Chorowski
(2015)'s location-aware one, whose energies also read a convolution over the previous step's weights.
``label_smoothing`` spreads that share of each token's target over the other tokens (blank excepted).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asrhybrid.e2e.ctc import summed_ctc_loss
from asrhybrid.e2e.ctc_prefix import CtcPrefixScorer
from asrhybrid.e2e.objective import TokenObjective
from asrhybrid.e2e.rnn import bidirectional
from asrhybrid.e2e.tokens import BLANK, SOS_EOS
from asrhybrid.outputs import atomic_output


def _stack_frames(h: torch.Tensor, lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each ``n`` consecutive frames of [B, T, D] as one of [B, ceil(T/n), nD], a sequence's short last group
    filled with its own last frame, whatever the batch's padding holds."""
    last = torch.minimum(torch.arange(h.shape[1], device=h.device)[None], lengths.to(h.device)[:, None] - 1)
    h = h.gather(1, last[..., None].expand(-1, -1, h.shape[-1]))
    if h.shape[1] % n:
        h = torch.cat([h, h[:, -1:].expand(-1, n - h.shape[1] % n, -1)], dim=1)
    B, T, D = h.shape
    return h.reshape(B, T // n, n * D), (lengths + n - 1) // n


class Listener(nn.Module):
    """The paper's pyramidal BLSTM: a first layer, then ``pyramid`` layers each over pairs of the last one's
    frames. ``stack`` > 1 stacks that many input frames before the first layer (Kaldi's low frame rate): the
    first layer runs at 1/stack of the frame rate, so ``stack`` 2 with one pyramid layer fewer gives the same
    output rate for about half the listener's time."""

    def __init__(self, feat_dim: int, hidden: int = 256, pyramid: int = 3, stack: int = 1):
        super().__init__()
        if stack < 1:
            raise ValueError(f"stack {stack}: at least 1")
        self.stack = stack
        self.first = nn.LSTM(stack * feat_dim, hidden, batch_first=True, bidirectional=True)
        self.pyramid = nn.ModuleList(
            nn.LSTM(4 * hidden, hidden, batch_first=True, bidirectional=True) for _ in range(pyramid)
        )
        self.output_dim = 2 * hidden

    def output_frames(self, num_frames: int) -> int:
        num_frames = (num_frames + self.stack - 1) // self.stack
        for _ in self.pyramid:
            num_frames = (num_frames + 1) // 2
        return num_frames

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.stack > 1:
            feats, lengths = _stack_frames(feats, lengths, self.stack)
        h = bidirectional(self.first, feats, lengths)
        for layer in self.pyramid:
            h, lengths = _stack_frames(h, lengths, 2)  # an odd last frame is paired with itself
            h = bidirectional(layer, h, lengths)
        return h, lengths


class DotAttention(nn.Module):
    """e_u = <phi(s), psi(h_u)>, softmax over the unpadded u."""

    def __init__(self, state_dim: int, enc_dim: int, dim: int = 128):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(state_dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.psi = nn.Sequential(nn.Linear(enc_dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.psi(enc)

    def forward(
        self,
        state: torch.Tensor,
        keys: torch.Tensor,
        enc: torch.Tensor,
        mask: torch.Tensor,
        previous: torch.Tensor | None = None,
    ):
        """(context [B, C], weights [B, U]) of states [B, S] over encodings [B, U, C] (mask: True on real u);
        ``previous`` (the last step's weights) is not read."""
        energy = torch.einsum("bd,bud->bu", self.phi(state), keys).masked_fill(~mask, -math.inf)
        weights = torch.softmax(energy, dim=-1)
        return torch.einsum("bu,buc->bc", weights, enc), weights


class LocationAttention(nn.Module):
    """Chorowski et al. (2015): e_u = w . tanh(W s + V h_u + U f_u + b), with f = F * alpha_prev, ``channels``
    filters of width ``kernel`` over the previous step's weights (uniform over the real frames at the first)."""

    def __init__(self, state_dim: int, enc_dim: int, dim: int = 128, channels: int = 10, kernel: int = 31):
        super().__init__()
        self.query = nn.Linear(state_dim, dim, bias=False)
        self.key = nn.Linear(enc_dim, dim)
        self.conv = nn.Conv1d(1, channels, kernel, padding=kernel // 2, bias=False)
        self.location = nn.Linear(channels, dim, bias=False)
        self.energy = nn.Linear(dim, 1, bias=False)

    def keys(self, enc: torch.Tensor) -> torch.Tensor:
        return self.key(enc)

    def forward(
        self,
        state: torch.Tensor,
        keys: torch.Tensor,
        enc: torch.Tensor,
        mask: torch.Tensor,
        previous: torch.Tensor | None = None,
    ):
        if previous is None:
            previous = mask.to(enc.dtype) / mask.sum(-1, keepdim=True).to(enc.dtype)
        f = self.location(self.conv(previous[:, None]).transpose(1, 2))  # [B, U, dim]
        energy = self.energy(torch.tanh(keys + self.query(state)[:, None] + f))[..., 0].masked_fill(~mask, -math.inf)
        weights = torch.softmax(energy, dim=-1)
        return torch.einsum("bu,buc->bc", weights, enc), weights


class LAS(nn.Module):
    def __init__(
        self,
        feat_dim: int,
        num_tokens: int,
        listener_hidden: int = 256,
        pyramid: int = 3,
        stack: int = 1,
        speller_hidden: int = 256,
        speller_layers: int = 2,
        embed_dim: int = 128,
        attention_dim: int = 128,
        sampling_rate: float = 0.1,
        max_output_ratio: float = 1.5,
        ctc_weight: float = 0.3,
        attention: str = "dot",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"ctc_weight {ctc_weight}: in [0, 1) (1 would leave the speller untrained)")
        if attention not in ("dot", "location"):
            raise ValueError(f"attention '{attention}': dot or location")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing {label_smoothing}: in [0, 1)")
        self.listener = Listener(feat_dim, listener_hidden, pyramid, stack)
        enc = self.listener.output_dim
        self.embed = nn.Embedding(num_tokens, embed_dim)
        self.speller = nn.LSTM(embed_dim + enc, speller_hidden, num_layers=speller_layers, batch_first=True)
        kind = DotAttention if attention == "dot" else LocationAttention
        self.attention = kind(speller_hidden, enc, attention_dim)
        self.output = nn.Sequential(
            nn.Linear(speller_hidden + enc, speller_hidden), nn.Tanh(), nn.Linear(speller_hidden, num_tokens)
        )
        self.ctc = nn.Linear(enc, num_tokens) if ctc_weight > 0 else None
        self.sampling_rate, self.max_output_ratio, self.num_tokens = sampling_rate, max_output_ratio, num_tokens
        self.ctc_weight, self.label_smoothing = ctc_weight, label_smoothing

    def output_frames(self, num_frames: int) -> int:
        return self.listener.output_frames(num_frames)

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor):
        enc, enc_lens = self.listener(feats, lengths)
        mask = torch.arange(enc.shape[1], device=enc.device)[None] < enc_lens[:, None]
        return enc, enc_lens, mask

    def ctc_log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """The CTC head's log-probabilities [B, U, V] of the listener's output (a model with ``ctc_weight`` > 0)."""
        if self.ctc is None:
            raise ValueError("this LAS has no CTC head (ctc_weight 0)")
        return torch.log_softmax(self.ctc(enc).float(), dim=-1)

    def step(self, token: torch.Tensor, context: torch.Tensor, state, enc, keys, mask, previous=None):
        """One speller step: (log-probabilities [B, V], new context, new state, attention weights);
        ``previous``, the last step's weights, for location-aware attention."""
        s, state = self._speller_step(torch.cat([self.embed(token), context], dim=-1), state)
        context, weights = self.attention(s, keys, enc, mask, previous)
        logits = self.output(torch.cat([s, context], dim=-1)).float()
        logits[:, BLANK] = -math.inf  # never predicted
        return torch.log_softmax(logits, dim=-1), context, state, weights

    def _speller_step(self, x: torch.Tensor, state):
        """One time step of the speller (``self.speller``'s layers and weights, its (h, c) [layers, B, H] state)
        through ``torch.lstm_cell``: the module called on one frame goes through oneDNN's sequence kernel,
        4x slower a step forward and backward on the CPU."""
        if state is None:
            zeros = x.new_zeros(self.speller.num_layers, x.shape[0], self.speller.hidden_size)
            state = (zeros, zeros)
        hs, cs = [], []
        # per layer: weight_ih, weight_hh, bias_ih, bias_hh (as e2e/rnn.py reads them)
        weights = self.speller._flat_weights
        for layer in range(self.speller.num_layers):
            h, c = torch.lstm_cell(x, (state[0][layer], state[1][layer]), *weights[4 * layer : 4 * layer + 4])
            hs.append(h)
            cs.append(c)
            x = h
        return x, (torch.stack(hs), torch.stack(cs))

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """The terms :meth:`loss` reports apart: the attention's and the CTC head's (a model with one)."""
        return ("att", "ctc") if self.ctc is not None else ()

    def loss(self, feats: torch.Tensor, lengths: torch.Tensor, labels: list[list[int]]):
        """(summed loss, the count of tokens and final <sos/eos>, the terms apart for :attr:`loss_parts`): the
        cross-entropy over them (label-smoothed with ``label_smoothing``), or with ``ctc_weight`` lambda > 0,
        (1 - lambda) of it plus lambda times the CTC head's summed loss."""
        enc, enc_lens, mask = self.encode(feats, lengths)
        keys = self.attention.keys(enc)
        B, U = len(labels), max(len(y) for y in labels) + 1
        targets = torch.full((B, U), -100, dtype=torch.int64, device=feats.device)
        for i, y in enumerate(labels):
            targets[i, : len(y) + 1] = torch.tensor(y + [SOS_EOS], dtype=torch.int64)
        token = torch.full((B,), SOS_EOS, dtype=torch.int64, device=feats.device)
        context = enc.new_zeros(B, enc.shape[-1])
        state, weights, total = None, None, feats.new_zeros((), dtype=torch.float32)
        eps = self.label_smoothing
        for u in range(U):
            log_probs, context, state, weights = self.step(token, context, state, enc, keys, mask, weights)
            nll = nn.functional.nll_loss(log_probs, targets[:, u], ignore_index=-100, reduction="sum")
            if eps > 0:  # the smoothed share over every token but blank (which is never predicted)
                spread = -log_probs[:, BLANK + 1 :].mean(-1)
                nll = (1 - eps) * nll + eps * spread[targets[:, u] >= 0].sum()
            total = total + nll
            teacher = targets[:, u].clamp(min=0)
            if self.training and self.sampling_rate > 0:  # scheduled sampling: the model's own token at a rate
                sampled = torch.multinomial(log_probs.detach().exp(), 1)[:, 0]
                use = torch.rand(B, device=feats.device) < self.sampling_rate
                teacher = torch.where(use, sampled, teacher)
            token = teacher
        count = int((targets >= 0).sum())
        if self.ctc is None:
            return total, count, {}
        ctc = summed_ctc_loss(self.ctc_log_probs(enc), enc_lens, labels)
        return (1 - self.ctc_weight) * total + self.ctc_weight * ctc, count, {"att": total, "ctc": ctc}

    def _step_all(self, live: list, enc: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> list:
        """:meth:`step` for every hypothesis of ``live`` (beam_search's tuples) in one batch: per hypothesis
        (log-probabilities [V], context [1, C], state, attention weights [1, U])."""
        H = len(live)
        last = torch.tensor([h[4] for h in live], device=enc.device)
        context = torch.cat([h[5] for h in live])
        previous = torch.cat([h[7] for h in live]) if live[0][7] is not None else None
        state = _stack_states([h[6] for h in live])
        lp, context, (hs, cs), weights = self.step(
            last, context, state, enc.expand(H, -1, -1), keys.expand(H, -1, -1), mask.expand(H, -1), previous
        )
        return [(lp[i], context[i : i + 1], (hs[:, i : i + 1], cs[:, i : i + 1]), weights[i : i + 1]) for i in range(H)]

    def beam_search(
        self,
        enc: torch.Tensor,
        beam: int = 4,
        nbest: int = 1,
        ctc_weight: float = 0.0,
        length_bonus: float = 0.0,
        fusion=None,
    ) -> list[tuple[list[int], float]]:
        """(tokens, score) of the best finished hypotheses, best first, for one utterance's encodings [U, C].

        With the defaults the score is the paper's log P(y|x) (<sos/eos> included) and a hypothesis ends at
        <sos/eos> or at max_output_ratio x U + 5 tokens. Joint decoding (Watanabe 2017): with ``ctc_weight``
        lambda > 0 (a model with a CTC head) the score of a prefix h is (1 - lambda) log p_att(h) + lambda log
        psi_ctc(h), CTC's prefix probability (asrhybrid.e2e.ctc_prefix; at <sos/eos>, the sequence's full CTC
        probability), the attention's top 1.5 x ``beam`` tokens tried per hypothesis, and no hypothesis longer
        than the U frames (CTC's limit). ``length_bonus`` per token and ``fusion`` (asrhybrid.e2e.search's
        WordFusion: shallow fusion with a word LM, its words scored as they complete) add to the score. The
        search stops when no live hypothesis can beat the best finished one (while every term only falls), or
        else by ESPnet's end detection: the best hypotheses ending at each of the last 3 lengths are all far
        (10^-10) below the best."""
        scorer = None
        if ctc_weight > 0:
            scorer = CtcPrefixScorer(self.ctc_log_probs(enc[None])[0])
        enc, mask = enc[None], torch.ones(1, enc.shape[0], dtype=torch.bool, device=enc.device)
        keys = self.attention.keys(enc)
        tries = min(beam if scorer is None else int(1.5 * beam), self.num_tokens - 1)
        max_len = enc.shape[1] if scorer is not None else int(self.max_output_ratio * enc.shape[1]) + 5
        rising = length_bonus > 0 or (fusion is not None and fusion.beta > 0)
        # (tokens, score, attention log-prob, CTC prefix, last token, context, state, attention weights)
        live = [
            ([], 0.0, 0.0, scorer.initial() if scorer else None, SOS_EOS, enc.new_zeros(1, enc.shape[-1]), None, None)
        ]
        finished: list[tuple[list[int], float]] = []
        for length in range(1, max_len + 1):
            candidates = []
            stepped = self._step_all(live, enc, keys, mask)  # one batched speller step for every live hypothesis
            for (tokens, _, att, prefix, *_), (lp, ctx, st, w) in zip(live, stepped):
                top = torch.topk(lp, tries)
                ids, att_lps = top.indices.tolist(), top.values.tolist()
                ctc = scorer.extend(prefix, ids) if scorer is not None else [None] * len(ids)
                for t, a, c in zip(ids, att_lps, ctc):
                    score = (1 - ctc_weight) * (att + a) + (ctc_weight * c.score if c is not None else 0.0)
                    if t == SOS_EOS:
                        score += length_bonus * len(tokens) + (fusion.final_score(tuple(tokens)) if fusion else 0.0)
                    else:
                        score += length_bonus * (len(tokens) + 1)
                        score += fusion.partial_score(tuple(tokens) + (t,)) if fusion else 0.0
                    candidates.append((tokens, score, att + a, c, t, ctx, st, w))
            candidates.sort(key=lambda c: -c[1])
            live = []
            for tokens, score, att, c, t, ctx, st, w in candidates:
                if t == SOS_EOS:
                    finished.append((tokens, score))
                elif len(live) < beam:
                    live.append((tokens + [t], score, att, c, t, ctx, st, w))
            if not live:
                break
            if len(finished) >= nbest:
                best = max(f[1] for f in finished)
                if not rising and best >= live[0][1]:
                    break  # no live hypothesis can beat the best finished one (every term only falls)
                if rising and _ended(finished, length, best):
                    break
        finished += [(tokens, score) for tokens, score, *_ in live] if not finished else []
        return sorted(finished, key=lambda f: -f[1])[:nbest]


def _stack_states(states: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    if states[0] is None:
        return None
    return torch.cat([h for h, _ in states], dim=1), torch.cat([c for _, c in states], dim=1)


def _ended(
    finished: list[tuple[list[int], float]],
    length: int,
    best: float,
    lengths: int = 3,
    margin: float = 10 * math.log(10),
) -> bool:
    """ESPnet's end detection: for each of the last ``lengths`` output lengths some hypothesis ended there
    (<sos/eos> counted), the best of them ``margin`` or more below the best finished hypothesis."""
    for m in range(lengths):
        ended_here = [score for tokens, score in finished if len(tokens) + 1 == length - m]
        if not ended_here or max(ended_here) - best >= -margin:
            return False
    return True


def greedy_las(model: LAS, enc: torch.Tensor, attention: list | None = None) -> list[int]:
    """The most likely token at every step until <sos/eos>; each step's attention weights [U] appended to
    ``attention`` when given."""
    enc, mask = enc[None], torch.ones(1, enc.shape[0], dtype=torch.bool, device=enc.device)
    keys = model.attention.keys(enc)
    token, context, state, weights, out = SOS_EOS, enc.new_zeros(1, enc.shape[-1]), None, None, []
    for _ in range(int(model.max_output_ratio * enc.shape[1]) + 5):
        lp, context, state, weights = model.step(
            torch.tensor([token], device=enc.device), context, state, enc, keys, mask, weights
        )
        if attention is not None:
            attention.append(weights[0].detach().float().cpu())
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
        loss, count, parts = model.loss(feats, lens, labels)
        return loss, count, (feats, lens), parts

    def greedy(self, model: LAS, outputs) -> list[list[int]]:
        enc, enc_lens, _ = model.encode(*outputs)
        return [greedy_las(model, e[: int(n)]) for e, n in zip(enc, enc_lens)]

    def plot_epoch(
        self, model: LAS, valid, exp_dir: Path, epoch: int, device: torch.device, utterances: int = 3
    ) -> Path | None:
        """The speller's attention weights over the listener's frames, step by step of greedy decoding, for the
        first ``utterances`` held-out utterances: ``exp_dir/attention/epoch-N.png``. A speller that learned to
        attend draws a diagonal; one that did not, vertical bands or a blur."""
        images = []
        model.eval()
        with torch.no_grad():
            for batch in self.batches(valid, None, 0, 1):
                if batch is None:
                    continue
                enc, enc_lens, _ = model.encode(batch.feats.to(device), batch.feat_lens.to(device))
                for utt, text, e, n in list(zip(batch.ids, batch.texts, enc, enc_lens))[: utterances - len(images)]:
                    weights: list[torch.Tensor] = []
                    greedy_las(model, e[: int(n)], weights)
                    images.append((utt, text, torch.stack(weights).numpy()))
                if len(images) == utterances:
                    break
        return (
            plot_attention(images, exp_dir / "attention" / f"epoch-{epoch}.png", f"{self.name} epoch {epoch}")
            if images
            else None
        )


def plot_attention(images: list[tuple[str, str, np.ndarray]], png: Path, title: str) -> Path:
    """(utterance, reference text, weights [steps, frames]) per panel, as one PNG."""
    import matplotlib  # heavy, and only training draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.4), squeeze=False)
    for ax, (utt, text, weights) in zip(axes[0], images):
        ax.imshow(weights, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
        ax.set(xlabel="listener frame", ylabel="output step (greedy)", title=f"{utt}\n{text[:40]}")
        ax.title.set_fontsize(8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return png
