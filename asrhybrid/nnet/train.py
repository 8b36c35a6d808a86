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
(asrhybrid.nnet.lstmp), ``fast_slow`` (asrhybrid.nnet.fast_slow); each as ``X_chain``, the same network
trained with LF-MMI by asrhybrid.chain, which gives :func:`train_am` its objective.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from asrhybrid.data.manifests import load_cuts
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import FeatureNormalizer
from asrhybrid.features.layout import FeatureSet
from asrhybrid.kaldi_tables import AlignmentTable, iter_alignments
from asrhybrid.nnet.augment import WaveformPerturbation
from asrhybrid.nnet.batches import (
    IGNORE,
    HeldOut,
    frame_batches,
)
from asrhybrid.nnet.checkpoint import AM, TrainedSystem, cpu_weights
from asrhybrid.nnet.fast_slow import FastSlowAM
from asrhybrid.nnet.models import build_model
from asrhybrid.nnet.priors import log_priors
from asrhybrid.nnet.trainer import (
    InputOptions,
    Objective,
    Workers,
    default_device,
    fit,
)
from asrhybrid.options import SYSTEMS
from asrhybrid.outputs import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(InputOptions):
    """Stage 6's options: the training loop's and the input's (asrhybrid.nnet.trainer) and the hybrid model's."""

    system: str = "lstmp"
    chunk_frames: int = 0  # 0: whole utterances; else chunks of this many target frames
    chunk_left_context: int = 40  # frames before a chunk's first target that warm up the recurrent state
    silence_scale: float = 2.7  # silence states' counts are divided by this for the priors (Sak 2014)
    fast_weight: float = 0.5  # fast_slow: weight of the fast AM's own cross-entropy in the loss
    model: dict = field(default_factory=dict)  # the system's model options (e.g. cells, proj, layers, delay)
    chain: dict = field(default_factory=dict)  # a chain system's LF-MMI options (asrhybrid.chain.objective)

    KEYED_WHEN_SET = ("chain", "weight_decay")  # enter a run's completion key only when given (older runs stay done)

    def __post_init__(self):
        super().__post_init__()
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown acoustic model '{self.system}' (systems: {', '.join(SYSTEMS)})")


def _losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, fast_weight: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
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
            fast_logits.float().reshape(-1, logits.shape[-1]), y, ignore_index=IGNORE, reduction="sum"
        )
    correct = int((logits.argmax(-1)[y != IGNORE] == y[y != IGNORE]).sum())
    return loss, ce.detach(), correct


class FrameObjective:
    """Frame cross-entropy on senone alignments (asrhybrid.nnet.trainer.Objective): batches of whole utterances
    or chunks with context, targets by key from ``ali_pdf``; ``count`` is the frames with a target."""

    loss_name, metric_name, count_name, stat_names = "ce", "frame_accuracy", "frames", ("ce", "correct")

    def __init__(
        self,
        cfg: TrainConfig,
        targets: AlignmentTable,
        normalizer: FeatureNormalizer,
        right_context: int,
        perturbation: WaveformPerturbation | None = None,
    ):
        self.name, self.cfg, self.targets, self.normalizer = cfg.system, cfg, targets, normalizer
        self.right_context, self.perturbation = right_context, perturbation

    def sequences(self, cuts, generator: torch.Generator | None, rank: int, world: int, **more):
        """frame_batches of ``cuts``: chunked and augmented in training (``generator``), held-out utterances
        whole and clean; ``more``: frame_batches' other options."""
        cfg = self.cfg
        if generator is None:  # held out: whole utterances, no augmentation
            return frame_batches(
                cuts, self.targets, self.normalizer, cfg.max_duration, None, rank=rank, world=world, **more
            )
        return frame_batches(
            cuts,
            self.targets,
            self.normalizer,
            cfg.max_duration,
            generator,
            cfg.chunk_frames,
            cfg.chunk_left_context,
            self.right_context,
            rank,
            world,
            cfg.augmentation,
            self.perturbation,
            **more,
        )

    def batches(self, cuts, generator: torch.Generator | None, rank: int, world: int, epoch: int = 0):
        return (None if x is None else (x, y) for x, y in self.sequences(cuts, generator, rank, world))

    def forward(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = (t.to(device) for t in batch)
        loss, ce, correct = _losses(model, x, y, self.cfg.fast_weight if model.training else 0.0)
        return loss, {"count": float((y != IGNORE).sum()), "ce": float(ce), "correct": float(correct)}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"ce": sums["ce"] / sums["count"], "frame_accuracy": sums["correct"] / sums["count"]}


def train_am(
    cuts_path: Path,
    ali_pdf: Path,
    num_pdfs: int,
    silence_pdfs: set[int],
    cmvn_mean: np.ndarray,
    cmvn_std: np.ndarray,
    exp_dir: Path,
    cfg: TrainConfig,
    resume_key: str | None = None,
    device: torch.device | str | None = None,
    objective: Callable[..., Objective] | None = None,
) -> dict:
    """Train ``cfg.system`` into ``exp_dir`` (see the module's doc for the files); returns the summary.
    ``objective(cfg, targets, normalizer, right_context, perturbation)`` makes what the model learns from
    (default: :class:`FrameObjective`, frame cross-entropy)."""
    exp_dir = Path(exp_dir)
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(cfg.seed)
    cuts = load_cuts(cuts_path)
    train = cuts.filter(HeldOut(cfg.valid_fraction, keep=False))
    valid = cuts.filter(HeldOut(cfg.valid_fraction, keep=True))
    targets = AlignmentTable(ali_pdf)
    normalizer = FeatureNormalizer.for_cuts(cfg.cmvn, cmvn_mean, cmvn_std, cuts, cuts_path)
    model = build_model(cfg.system, int(cmvn_mean.shape[0]), num_pdfs, cfg.model).to(device)
    context = getattr(model, "right_context", 0)
    log.info(
        "%s: %d parameters, %s; chunks: %s",
        cfg.system,
        sum(p.numel() for p in model.parameters()),
        device,
        f"{cfg.chunk_frames} frames, left context {cfg.chunk_left_context}, right {context}"
        if cfg.chunk_frames > 0
        else "whole utterances",
    )
    # noise only (no speed perturbation): the frames stay where the alignments put them
    perturbation = (
        WaveformPerturbation([], FeatureSet.of_cuts(cuts_path).fbank_config(), cfg.noise_snr) if cfg.noise_snr else None
    )
    result = fit(
        model,
        (objective or FrameObjective)(cfg, targets, normalizer, context, perturbation),
        train,
        valid,
        exp_dir,
        cfg,
        device,
        resume_key,
    )
    targets.close()
    summary = {
        "system": cfg.system,
        "epochs": result["history"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "final": {
            "averaged_epochs": result["averaged_epochs"],
            "valid_ce": result["final"].get("ce"),
            "valid_frame_accuracy": result["final"].get("frame_accuracy"),
        },
        "workers": result["workers"],
        "device": result["device"],
        "kernels": result["kernels"],
    }
    if result["leader"]:
        counts = np.zeros(num_pdfs)
        for _, pdfs in iter_alignments(ali_pdf):  # the training alignments' state frequencies
            counts += np.bincount(pdfs, minlength=num_pdfs)
        log_prior = log_priors(counts, silence_pdfs, cfg.silence_scale)
        TrainedSystem(AM, asdict(cfg), cpu_weights(model), cmvn_mean, cmvn_std, num_pdfs, log_prior).save(exp_dir)
        write_text_atomic(exp_dir / "train.json", json.dumps(summary, indent=1) + "\n")
    Workers().barrier()
    return summary
