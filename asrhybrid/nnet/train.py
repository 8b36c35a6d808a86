"""Stage 6: frame cross-entropy training of a hybrid acoustic model on senone alignments (Sak 2014's recipe).

Batches come from a Lhotse sampler over the cuts (by total duration), with
features read from disk per batch and normalised with the global CMVN, and
targets read by key from the tree stage's ``ali_pdf.{ark,scp}``: nothing
proportional to the corpus is held in memory. Padding repeats an utterance's
last frame (Kaldi's edge convention for splicing) and its targets are ignored
by the loss. The loop itself (checkpoints and resume, the learning-rate
schedule, averaging, TensorBoard, data parallel, mixed precision) is
asrhybrid.nnet.trainer's, shared with the end-to-end systems; this module
gives it the frame cross-entropy objective.

Recurrent models train on chunks with left context, as Kaldi's nnet3 LSTM
recipes do (``chunk_frames`` 150, ``chunk_left_context`` 40 there), not
with truncated BPTT carrying state across consecutive chunks: a chunk
needs nothing from the previous step, so batches mix utterances freely
(shuffled like frames, a better SGD estimate than a few whole utterances)
and shard over data-parallel workers without a per-stream state to keep
in step. Each chunk starts from a zero state and reads ``chunk_left_context``
frames before its first target to warm it up, plus the model's own right
context (the LSTMP's delay, the Fast/Slow look-ahead, the DNN's splice)
after its last target; decoding runs over whole utterances.

Frame accuracy (Sak 2014's metric) and cross-entropy are measured after
every epoch on held-out training utterances, as Kaldi's nnet recipes
validate on utterances held out of their egs: a share ``valid_fraction`` of
the aligned utterances, chosen by a hash of their ids (so no list of the
corpus is kept), is never trained on.

Outputs per experiment directory: epoch-N.pt, final.pt (the last epoch's
model, or the average of the last ``average_last`` epochs, icefall's
--avg), train.json, curves.png (loss and frame accuracy per epoch), and
TensorBoard event files in tensorboard/.

Systems: ``dnn`` (spliced frames, asrhybrid.nnet.mlp), ``lstmp``
(asrhybrid.nnet.lstmp), ``fast_slow`` (asrhybrid.nnet.fast_slow).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from asrhybrid.config import SYSTEMS
from asrhybrid.data.manifests import load_cuts
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import FeatureNormalizer, speaker_of
from asrhybrid.features.compute import fbank_config_of
from asrhybrid.kaldi_io import AlignmentTable, iter_alignments
from asrhybrid.nnet.adapt import SpeakerAdaptedAM
from asrhybrid.nnet.augment import Augmentation, WaveformPerturbation, training_features
from asrhybrid.nnet.trainer import InputOptions, Workers, average_models, default_device, fit  # noqa: F401
from asrhybrid.nnet.trainer import autocast as _autocast  # noqa: F401
from asrhybrid.nnet.fast_slow import FastSlowAM, SlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.nnet.priors import log_priors, scaled_loglikes
from asrhybrid.recipe.outputs import atomic_output, write_text_atomic

log = logging.getLogger(__name__)


IGNORE = -100  # targets of padding and context frames


@dataclass
class TrainConfig(InputOptions):
    """Stage 6's options: the training loop's and the input's (asrhybrid.nnet.trainer) and the hybrid model's."""

    system: str = "lstmp"
    chunk_frames: int = 0  # 0: whole utterances; else chunks of this many target frames
    chunk_left_context: int = 40  # frames before a chunk's first target that warm up the recurrent state
    silence_scale: float = 2.7  # silence states' counts are divided by this for the priors (Sak 2014)
    fast_weight: float = 0.5  # fast_slow: weight of the fast AM's own cross-entropy in the loss
    model: dict = field(default_factory=dict)  # the system's model options (e.g. cells, proj, layers, delay)

    def __post_init__(self):
        super().__post_init__()
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown acoustic model '{self.system}' (systems: {', '.join(SYSTEMS)})")


class FrameDNN(nn.Module):
    """The DNN baseline over padded batches: each frame spliced with +-``context`` frames, an MLP on each."""

    def __init__(self, feat_dim: int, num_pdfs: int, context: int = 5, hidden: int = 512, layers: int = 4):
        super().__init__()
        self.mlp = SplicedMLP(feat_dim, num_pdfs, context, hidden, layers)

    @property
    def right_context(self) -> int:
        return self.mlp.context

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.mlp(splice(x, self.mlp.context)) for x in feats])


def build_model(system: str, feat_dim: int, num_pdfs: int, options: dict) -> nn.Module:
    classes = {"dnn": FrameDNN, "lstmp": LstmpAM, "fast_slow": FastSlowAM, "slow": SlowAM}
    if system not in classes:
        raise ConfigError(f"unknown acoustic model '{system}' (systems: {', '.join(SYSTEMS)})")
    try:
        return classes[system](feat_dim, num_pdfs, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{system}: bad model option: {e}") from None


def held_out(utt: str, fraction: float) -> bool:
    """Whether an utterance is in the validation share (a hash of its id: stable, no list kept)."""
    return zlib.crc32(utt.encode("utf-8")) % 10_000 < fraction * 10_000


def _cut_held_out(cut, fraction: float, keep: bool) -> bool:  # a named function: Lhotse warns on lambdas
    return held_out(cut.id, fraction) == keep


def _cut_aligned(cut, targets: AlignmentTable) -> bool:
    return cut.id in targets


def chunk_spans(num_frames: int, chunk: int, left: int, right: int) -> list[tuple[int, int, int, int]]:
    """(input start, target start, target end, input end) per chunk of an utterance; one span when chunk <= 0."""
    if chunk <= 0:
        return [(0, 0, num_frames, num_frames)]
    return [(max(0, s - left), s, min(s + chunk, num_frames), min(num_frames, s + chunk + right))
            for s in range(0, num_frames, chunk)]


def pad_batch(feats: list[torch.Tensor]) -> torch.Tensor:
    """[B, T_max, D], each sequence padded by repeating its last frame."""
    T = max(f.shape[0] for f in feats)
    return torch.stack([torch.cat([f, f[-1:].expand(T - f.shape[0], -1)]) for f in feats])


def pad_targets(ys: list[torch.Tensor]) -> torch.Tensor:
    """[B, T] targets of a batch, padded with IGNORE."""
    T = max(len(y) for y in ys)
    return torch.stack([torch.cat([y, y.new_full((T - len(y),), IGNORE)]) for y in ys])


def _sampler(cuts, max_duration: float, generator: torch.Generator | None):
    from lhotse.dataset import SimpleCutSampler

    seed = int(torch.randint(1 << 30, (1,), generator=generator)) if generator is not None else 0
    # world_size=1: every worker draws the same global batches and shards them itself (see the module's doc)
    return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=generator is not None, seed=seed,
                            world_size=1, rank=0)


def _batches(cuts, targets: AlignmentTable, normalizer: FeatureNormalizer, max_duration: float,
             generator: torch.Generator | None, chunk: int = 0, left: int = 0, right: int = 0, rank: int = 0,
             world: int = 1, augmentation: Augmentation | None = None,
             perturbation: WaveformPerturbation | None = None):
    """(features [B, T, D], targets [B, T] with IGNORE outside the chunks' targets) of this worker's share of
    each global batch of the aligned ``cuts``; (None, None) when its share of a batch is empty. With a
    ``perturbation`` (training: noise added to the waveform, features computed again) and an active
    ``augmentation``, each utterance is warped before and masked after the normalisation, with draws
    from its own generator, seeded by the batch's draw from ``generator`` and the utterance's id (every worker
    draws the batch's seed, so the generators stay in step whatever each one's share)."""
    augmentation = augmentation if augmentation is not None and augmentation.active and generator is not None else None
    perturbation = perturbation if generator is not None else None
    for batch in _sampler(cuts.filter(partial(_cut_aligned, targets=targets)), max_duration, generator):
        batch_seed = (int(torch.randint(1 << 30, (1,), generator=generator))
                      if augmentation is not None or perturbation is not None else 0)
        xs, ys = [], []
        for cut in list(batch)[rank::world]:
            f = training_features(cut, normalizer, batch_seed, augmentation, perturbation)
            ali = torch.as_tensor(targets[cut.id])[: f.shape[0]]
            for a, s, e, b in chunk_spans(len(ali), chunk, left, right):
                y = torch.full((b - a,), IGNORE, dtype=torch.int64)
                y[s - a : e - a] = ali[s:e]
                xs.append(f[a:b])
                ys.append(y)
        if not xs:
            yield None, None
            continue
        yield pad_batch(xs), pad_targets(ys)


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fast_weight: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss to minimise, summed over frames; the senone cross-entropy sum; correct frames)."""
    if isinstance(model, FastSlowAM):
        logits, fast_logits = model.forward_with_fast(x)
    else:
        logits, fast_logits = model(x), None
    logits = logits.float().reshape(-1, logits.shape[-1])
    y = y.reshape(-1)
    ce = nn.functional.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum")
    loss = ce
    if fast_logits is not None and fast_weight:
        loss = ce + fast_weight * nn.functional.cross_entropy(
            fast_logits.float().reshape(-1, logits.shape[-1]), y, ignore_index=IGNORE, reduction="sum")
    correct = int((logits.argmax(-1)[y != IGNORE] == y[y != IGNORE]).sum())
    return loss, ce.detach(), correct


class FrameObjective:
    """Frame cross-entropy on senone alignments (asrhybrid.nnet.trainer.Objective): batches of whole utterances
    or chunks with context, targets by key from ``ali_pdf``; ``count`` is the frames with a target."""

    loss_name, metric_name, count_name, stat_names = "ce", "frame_accuracy", "frames", ("ce", "correct")

    def __init__(self, cfg: TrainConfig, targets: AlignmentTable, normalizer: FeatureNormalizer, right_context: int,
                 perturbation: WaveformPerturbation | None = None):
        self.name, self.cfg, self.targets, self.normalizer = cfg.system, cfg, targets, normalizer
        self.right_context, self.perturbation = right_context, perturbation

    def batches(self, cuts, generator: torch.Generator | None, rank: int, world: int, epoch: int = 0):
        cfg = self.cfg
        if generator is None:  # held out: whole utterances, no augmentation
            batches = _batches(cuts, self.targets, self.normalizer, cfg.max_duration, None, rank=rank, world=world)
        else:
            batches = _batches(cuts, self.targets, self.normalizer, cfg.max_duration, generator, cfg.chunk_frames,
                               cfg.chunk_left_context, self.right_context, rank, world, cfg.augmentation,
                               self.perturbation)
        return (None if x is None else (x, y) for x, y in batches)

    def forward(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(device) for t in batch)
        loss, ce, correct = _losses(model, x, y, self.cfg.fast_weight if model.training else 0.0)
        return loss, {"count": float((y != IGNORE).sum()), "ce": float(ce), "correct": float(correct)}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"ce": sums["ce"] / sums["count"], "frame_accuracy": sums["correct"] / sums["count"]}


def train_am(cuts_path: Path, ali_pdf: Path, num_pdfs: int, silence_pdfs: set[int], cmvn_mean: np.ndarray,
             cmvn_std: np.ndarray, exp_dir: Path, cfg: TrainConfig, resume_key: str | None = None,
             device: torch.device | str | None = None) -> dict:
    """Train ``cfg.system`` into ``exp_dir`` (see the module's doc for the files); returns the summary."""
    exp_dir = Path(exp_dir)
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(cfg.seed)
    cuts = load_cuts(cuts_path)
    train = cuts.filter(partial(_cut_held_out, fraction=cfg.valid_fraction, keep=False))
    valid = cuts.filter(partial(_cut_held_out, fraction=cfg.valid_fraction, keep=True))
    targets = AlignmentTable(ali_pdf)
    normalizer = FeatureNormalizer.for_cuts(cfg.cmvn, cmvn_mean, cmvn_std, cuts, cuts_path)
    model = build_model(cfg.system, int(cmvn_mean.shape[0]), num_pdfs, cfg.model).to(device)
    context = getattr(model, "right_context", 0)
    log.info("%s: %d parameters, %s; chunks: %s", cfg.system, sum(p.numel() for p in model.parameters()), device,
             f"{cfg.chunk_frames} frames, left context {cfg.chunk_left_context}, right {context}"
             if cfg.chunk_frames > 0 else "whole utterances")
    # noise only (no speed perturbation): the frames stay where the alignments put them
    perturbation = WaveformPerturbation([], fbank_config_of(Path(cuts_path).parent), cfg.noise_snr) if cfg.noise_snr else None
    result = fit(model, FrameObjective(cfg, targets, normalizer, context, perturbation), train, valid, exp_dir, cfg, device,
                 resume_key)
    targets.close()
    summary = {"system": cfg.system, "epochs": result["history"], "parameters": sum(p.numel() for p in model.parameters()),
               "final": {"averaged_epochs": result["averaged_epochs"], "valid_ce": result["final"].get("ce"),
                         "valid_frame_accuracy": result["final"].get("frame_accuracy")},
               "workers": result["workers"], "device": result["device"], "kernels": result["kernels"]}
    if result["leader"]:
        counts = np.zeros(num_pdfs)
        for _, pdfs in iter_alignments(ali_pdf):  # the training alignments' state frequencies
            counts += np.bincount(pdfs, minlength=num_pdfs)
        log_prior = log_priors(counts, silence_pdfs, cfg.silence_scale)
        with atomic_output(exp_dir / "final.pt") as tmp:
            torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "config": asdict(cfg),
                        "num_pdfs": num_pdfs, "feat_mean": cmvn_mean, "feat_std": cmvn_std, "log_prior": log_prior}, tmp)
        write_text_atomic(exp_dir / "train.json", json.dumps(summary, indent=1) + "\n")
    Workers().barrier()
    return summary


def load_am(exp_dir: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, its final.pt) of a trained system."""
    ckpt = torch.load(Path(exp_dir) / "final.pt", weights_only=False, map_location="cpu")
    cfg = TrainConfig(**ckpt["config"])
    model = build_model(cfg.system, int(ckpt["feat_mean"].shape[0]), ckpt["num_pdfs"], cfg.model)
    model.load_state_dict(ckpt["model"])
    if ckpt.get("adaptation"):  # adapt-am's per-speaker transforms (asrhybrid.nnet.adapt)
        model = SpeakerAdaptedAM.from_state(model, int(ckpt["feat_mean"].shape[0]), ckpt["adaptation"])
    return model.to(device).eval(), ckpt


def feature_normalizer(final: dict, cuts=None, cuts_path: Path | str | None = None) -> FeatureNormalizer:
    """How a trained system's input is normalised (TrainConfig.cmvn), for ``cuts`` (the whole set, for the
    speakers' statistics; see FeatureNormalizer.for_cuts) or, with none, for single files (transcribe)."""
    mode = final["config"].get("cmvn", "global")
    if cuts is None:
        return FeatureNormalizer(mode, final["feat_mean"], final["feat_std"])
    return FeatureNormalizer.for_cuts(mode, final["feat_mean"], final["feat_std"], cuts, cuts_path)


def iter_loglikes(model: nn.Module, final: dict, cuts, acwt: float = 1.0, prior_scale: float = 1.0,
                  max_duration: float = 120.0, device: torch.device | str = "cpu",
                  normalizer: FeatureNormalizer | None = None) -> Iterator[tuple[object, np.ndarray]]:
    """(cut, [T, num_pdfs] scaled log-likelihoods acwt x (log posterior - prior_scale x log prior)) per cut, in the
    cuts' order: what the decoder reads, in memory (decoding, transcribe) or from compute-loglikes' archive.
    ``normalizer``: built over ``cuts`` when not given (give it when ``cuts`` are a share of a set whose
    speakers' statistics span the whole set)."""
    from lhotse import CutSet
    from lhotse.dataset import SimpleCutSampler

    cuts = cuts if isinstance(cuts, CutSet) else CutSet.from_cuts(cuts)
    normalizer = normalizer or feature_normalizer(final, cuts)
    model.eval()
    with torch.no_grad():
        for batch in SimpleCutSampler(cuts, max_duration=max_duration, world_size=1, rank=0):
            feats = [normalizer(c) for c in batch]
            x = pad_batch(feats).to(device)
            if isinstance(model, SpeakerAdaptedAM):  # each cut's speaker's transforms
                logits = model(x, [speaker_of(c) for c in batch], [c.id for c in batch])
            else:
                logits = model(x)
            log_post = torch.log_softmax(logits.float(), dim=-1).cpu()
            for cut, f, lp in zip(batch, feats, log_post):
                yield cut, scaled_loglikes(lp[: f.shape[0]].numpy(), final["log_prior"], acwt, prior_scale)


def compute_loglikes(cuts_path: Path, exp_dir: Path, out_ark: Path, acwt: float = 1.0, prior_scale: float = 1.0,
                     max_duration: float = 120.0, device: torch.device | str | None = None) -> int:
    """Every cut's scaled log-likelihoods (:func:`iter_loglikes`) into a Kaldi float-matrix table ``out_ark``
    (+ .scp); returns the count."""
    from asrhybrid.kaldi_io import matrix_table_writer

    device = torch.device(device) if device is not None else default_device()
    model, final = load_am(exp_dir, device)
    done = 0
    cuts = load_cuts(cuts_path)
    normalizer = feature_normalizer(final, cuts, cuts_path)
    with matrix_table_writer(out_ark) as write:
        for cut, loglikes in iter_loglikes(model, final, cuts, acwt, prior_scale, max_duration, device, normalizer):
            write(cut.id, loglikes)
            done += 1
    return done
