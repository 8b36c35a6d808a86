"""Unsupervised speaker adaptation of a hybrid acoustic model on its own first pass (a second decoding pass, as
Kaldi decodes its SAT systems with fMLLR transforms estimated on the first pass's lattices).

Per speaker, two small transforms are trained while the network stays fixed:

- **LIN** (Neto et al. 1995, a linear input network): an affine map ``W x + b`` of the normalised features,
  identity at the start; the feature-space counterpart of fMLLR. After speaker CMVN, what is left of a new
  voice is mostly spectral shape (what VTLN warps), which a linear map of the mel bins can follow.
- **LHUC** (Swietojanski and Renals 2014): a scale ``2 sigmoid(a)`` on each hidden unit that feeds an affine
  layer (the DNN's hidden layers, the LSTMP's projection into its output layer, the Fast/Slow joint's input),
  1 at the start.

The targets are the pdfs of the first pass's best paths (decode's ``best.N.jsonl``, transition ids mapped
through the model's transition model) and the loss the frame cross-entropy, as in training. Utterances that
failed in the first pass have no targets and are left out. Iterating (decode with the adapted model, adapt the
base model again on the better best paths) is the recipe's.

An adapted system is a model directory like any other: its ``final.pt`` is the base model's with an
``adaptation`` entry (the speakers, their transforms and where they came from), so ``decode``,
``compute-loglikes`` and the scoring tools take it unchanged. A speaker it has no transforms for is an error,
not a silent fallback to the unadapted model (Kaldi's ``transform-feats`` fails the same way).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from asrhybrid.determinism import fix_training_threads
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.features.cmvn import speaker_of
from asrhybrid.nnet.batches import IGNORE, pad_batch, pad_targets, sampler
from asrhybrid.nnet.fast_slow import FastSlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.models import ChainAM, FrameDNN

log = logging.getLogger(__name__)

TRANSFORMS = ("lin", "lhuc")


@dataclass
class AdaptConfig:
    """adapt-am's options."""

    transforms: list[str] = field(default_factory=lambda: list(TRANSFORMS))
    epochs: int = 10
    lr: float = 0.01  # Adam, on the transforms only
    max_duration: float = 30.0  # seconds of audio per batch
    max_grad_norm: float = 5.0
    seed: int = 0
    num_threads: int = 2  # intra-op threads: fixed, so a seed trains the same model on any machine (determinism.py)

    def __post_init__(self):
        if isinstance(self.transforms, str):
            self.transforms = [self.transforms]
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad or not self.transforms:
            raise ConfigError(f"adapt: transforms {self.transforms}: one or more of {', '.join(TRANSFORMS)}")
        if self.epochs < 1 or self.lr <= 0 or self.max_duration <= 0 or self.max_grad_norm <= 0:
            raise ConfigError(
                f"adapt: epochs ({self.epochs}), lr ({self.lr}), max_duration ({self.max_duration}) "
                f"and max_grad_norm ({self.max_grad_norm}) must be positive"
            )


def lhuc_layers(model: nn.Module) -> list[nn.Linear]:
    """The affine layers whose inputs are hidden units, which LHUC scales."""
    if isinstance(model, ChainAM):
        return lhuc_layers(model.network)
    if isinstance(model, FrameDNN):
        return [m for m in model.mlp.body if isinstance(m, nn.Linear)][1:]
    if isinstance(model, LstmpAM):
        return [model.output]
    if isinstance(model, FastSlowAM):
        return [model.joint[1]]
    raise ConfigError(f"no LHUC layers known for {type(model).__name__}")


class SpeakerAdaptedAM(nn.Module):
    """A hybrid acoustic model with per-speaker LIN and LHUC transforms: ``forward(feats, speakers)``, one
    speaker key per sequence of the batch. The base model's parameters are not trained here."""

    def __init__(self, base: nn.Module, feat_dim: int, speakers: list[str], transforms: list[str]):
        super().__init__()
        self.base, self.transforms = base, list(transforms)
        self.speakers = {s: i for i, s in enumerate(speakers)}
        n = len(speakers)
        self.lin_weight = self.lin_bias = None
        if "lin" in transforms:
            self.lin_weight = nn.Parameter(torch.eye(feat_dim).repeat(n, 1, 1))
            self.lin_bias = nn.Parameter(torch.zeros(n, feat_dim))
        layers = lhuc_layers(base) if "lhuc" in transforms else []
        self.lhuc = nn.ParameterList(nn.Parameter(torch.zeros(n, m.in_features)) for m in layers)
        self._scales: list[torch.Tensor] | None = None
        network = base.network if isinstance(base, ChainAM) else base
        self._per_sequence = isinstance(network, FrameDNN)  # its MLP runs per sequence, on [T, H] frames
        for k, m in enumerate(layers):
            m.register_forward_pre_hook(partial(self._scale_input, k))

    def _scale_input(self, k: int, module: nn.Module, args: tuple) -> tuple | None:
        if self._scales is None:
            return None
        x, s = args[0], self._scales[k]  # x [B, ..., H], s [B, H]
        return (x * s.view(s.shape[0], *([1] * (x.dim() - 2)), s.shape[1]),) + tuple(args[1:])

    @property
    def right_context(self) -> int:
        return getattr(self.base, "right_context", 0)

    def index(self, speakers: list[str], utts: list[str] | None = None) -> torch.Tensor:
        missing = [(s, u) for s, u in zip(speakers, utts or speakers) if s not in self.speakers]
        if missing:
            s, u = missing[0]
            raise DataError(
                [
                    f"speaker '{s}' (utterance {u}) has no adaptation transforms: this adapted model was "
                    f"made for {len(self.speakers)} other speakers (adapt-am on the set being decoded)"
                ]
            )
        return torch.as_tensor([self.speakers[s] for s in speakers], dtype=torch.long)

    def forward(self, feats: torch.Tensor, speakers: list[str], utts: list[str] | None = None) -> torch.Tensor:
        return self._with_transforms(self.base, feats, speakers, utts)

    @property
    def frame_step(self) -> int:
        """The frames of the input per frame of the outputs adaptation trains on (a chain model's subsampling)."""
        return self.base.subsampling if isinstance(self.base, ChainAM) else 1

    def adaptation_logits(self, feats: torch.Tensor, speakers: list[str], utts: list[str] | None = None):
        """What adaptation's cross-entropy reads: the outputs, or of a chain model its cross-entropy output
        (a softmax over the same pdfs) at the chain's frame rate."""
        if not isinstance(self.base, ChainAM):
            return self.forward(feats, speakers, utts)
        step = self.frame_step
        return self._with_transforms(lambda x: self.base.forward_with_xent(x)[1][:, ::step], feats, speakers, utts)

    def _with_transforms(self, run, feats: torch.Tensor, speakers: list[str], utts: list[str] | None) -> torch.Tensor:
        idx = self.index(speakers, utts).to(feats.device)
        if self.lin_weight is not None:
            feats = torch.einsum("bed,btd->bte", self.lin_weight[idx], feats) + self.lin_bias[idx][:, None]
        scales = [2 * torch.sigmoid(a[idx]) for a in self.lhuc]
        try:
            if not self._per_sequence:
                self._scales = scales
                return run(feats)
            outputs = []  # the DNN's MLP sees one sequence's frames [T, H] at a time: its scales go with it
            for b in range(feats.shape[0]):
                self._scales = [s[b : b + 1] for s in scales]
                outputs.append(run(feats[b : b + 1]))
            return torch.cat(outputs)
        finally:
            self._scales = None

    def transforms_state(self) -> dict:
        """What final.pt keeps of the adaptation (with the base model's own state beside it)."""
        return {
            "speakers": list(self.speakers),
            "transforms": self.transforms,
            "state": {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("base.")},
        }

    @classmethod
    def from_state(cls, base: nn.Module, feat_dim: int, saved: dict) -> SpeakerAdaptedAM:
        model = cls(base, feat_dim, saved["speakers"], saved["transforms"])
        model.load_state_dict({**{f"base.{k}": v for k, v in base.state_dict().items()}, **saved["state"]})
        return model


def first_pass_targets(best_records, tid_to_pdf: np.ndarray):
    """(utt, pdf ids) of each first-pass best path that has one (failed utterances are skipped)."""
    for rec in best_records:
        if rec.get("error") or not rec.get("tids"):
            continue
        tids = np.asarray(rec["tids"], dtype=np.int64)
        if tids.min() < 1 or tids.max() >= len(tid_to_pdf):
            raise DataError(
                [
                    f"{rec['utt']}: transition ids {tids.min()}..{tids.max()} outside the model's "
                    f"1..{len(tid_to_pdf) - 1}: the decode was made with another model"
                ]
            )
        yield rec["utt"], tid_to_pdf[tids]


def _has_target(cut, targets) -> bool:  # a named function: Lhotse warns on lambdas
    return cut.id in targets


def adapt_speakers(
    base: nn.Module, feat_dim: int, cuts, targets, normalizer, cfg: AdaptConfig, device: torch.device | str = "cpu"
) -> tuple[SpeakerAdaptedAM, dict]:
    """Train every speaker's transforms on ``targets`` (utt -> pdf ids, a mapping or AlignmentTable) with the
    base model fixed. After each epoch the frame cross-entropy on the targets is measured per speaker, and each
    speaker keeps the transforms of its best epoch (the identity when none beat it): adaptation never leaves a
    speaker worse on its own first pass. Returns the adapted model (eval mode) and a report: per speaker its
    frames, cross-entropy before and after, and the epoch kept."""
    aligned = cuts.filter(partial(_has_target, targets=targets))
    speakers = sorted({speaker_of(c) for c in aligned})
    if not speakers:
        raise DataError(["no utterance of the cuts has a first-pass best path to adapt on"])
    model = SpeakerAdaptedAM(base, feat_dim, speakers, cfg.transforms).to(device)
    for p in model.base.parameters():
        p.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if not n.startswith("base.")]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    fix_training_threads(cfg.num_threads)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.eval()  # no dropout: the network is fixed, only the transforms learn

    def batches(shuffle: bool):
        for batch in sampler(aligned, cfg.max_duration, generator if shuffle else None):
            feats, ys, spk, utts = [], [], [], []
            for cut in batch:
                f = normalizer(cut)
                y = torch.as_tensor(np.asarray(targets[cut.id]), dtype=torch.long)
                if len(y) != -(-f.shape[0] // model.frame_step):
                    raise DataError(
                        [
                            f"{cut.id}: the first-pass best path has {len(y)} frames, the features "
                            f"{f.shape[0]}: the decode was made from other features"
                        ]
                    )
                feats.append(f)
                ys.append(y)
                spk.append(speaker_of(cut))
                utts.append(cut.id)
            yield pad_batch(feats).to(device), pad_targets(ys).to(device), spk, utts

    def frame_ce() -> dict[str, list[float]]:
        sums: dict[str, list[float]] = {s: [0.0, 0.0] for s in speakers}
        with torch.no_grad():
            for x, y, spk, utts in batches(False):
                ce = nn.functional.cross_entropy(
                    model.adaptation_logits(x, spk, utts).float().transpose(1, 2),
                    y,
                    ignore_index=IGNORE,
                    reduction="none",
                ).sum(1)
                for s, c, n in zip(spk, ce.tolist(), (y != IGNORE).sum(1).tolist()):
                    sums[s][0] += c
                    sums[s][1] += n
        return sums

    def per_frame(sums: dict[str, list[float]]) -> dict[str, float]:
        return {s: c / max(1.0, n) for s, (c, n) in sums.items()}

    first = frame_ce()
    frames = {s: n for s, (_, n) in first.items()}
    before = per_frame(first)
    best = dict(before)  # per speaker: the lowest cross-entropy so far, and the epoch of its transforms
    best_epoch = {s: 0 for s in speakers}
    kept = [p.detach().clone() for p in params]  # the identity at first
    for epoch in range(1, cfg.epochs + 1):
        for x, y, spk, utts in batches(True):
            n = int((y != IGNORE).sum())
            loss = nn.functional.cross_entropy(
                model.adaptation_logits(x, spk, utts).float().transpose(1, 2), y, ignore_index=IGNORE, reduction="sum"
            )
            opt.zero_grad()
            (loss / max(1, n)).backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
        now = per_frame(frame_ce())
        improved = [s for s in speakers if now[s] < best[s]]
        with torch.no_grad():
            for s in improved:
                k = model.speakers[s]
                for saved, p in zip(kept, params):
                    saved[k] = p[k]
                best[s], best_epoch[s] = now[s], epoch
        log.info(
            "adapt epoch %d: frame cross-entropy %.4f on the first pass's best paths; %d of %d speakers improved",
            epoch,
            sum(now.values()) / len(now),
            len(improved),
            len(speakers),
        )
    with torch.no_grad():  # each speaker keeps its best epoch's transforms (the identity if none was better)
        for saved, p in zip(kept, params):
            p.copy_(saved)
    report = {
        "config": asdict(cfg),
        "speakers": {
            s: {
                "frames": int(frames[s]),
                "ce_before": round(before[s], 4),
                "ce_after": round(best[s], 4),
                "epoch": best_epoch[s],
            }
            for s in speakers
        },
    }
    return model.eval(), report
