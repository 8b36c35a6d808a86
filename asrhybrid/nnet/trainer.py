"""The training loop every model of asrhybrid goes through: the hybrid acoustic models of stage 6 and the
end-to-end systems of stages 9+.

What a model learns from is an :class:`Objective`: it turns cuts into batches (features from disk per batch,
targets by key: nothing proportional to the corpus in memory), a batch into a summed loss and summed
statistics, and summed statistics into metrics. :func:`fit` does the rest, the same for all:

- Adam or SGD (Nesterov momentum 0.9), the learning rate decaying exponentially per epoch from ``lr`` to
  ``final_lr`` (Kaldi nnet3's schedule), gradient clipping;
- a checkpoint after every epoch (model, optimiser, RNG states, the log so far): a killed run resumes after
  its last epoch when its checkpoints were made under the same ``resume_key``, and a run that starts over
  removes an earlier one's files;
- the metrics on held-out cuts after every epoch, TensorBoard events, ``curves.png`` (and the objective's own
  figures, e.g. LAS's attention weights);
- the average of the last ``average_last`` epochs' weights (icefall's --avg);
- data parallel under torchrun: every worker draws the same global batch from the same sampler state and
  takes its share; the loss is each worker's sum divided by the global count of what it is averaged over,
  and gradients are summed with one all-reduce, so N workers take exactly the steps of one process;
- bfloat16 autocast on CUDA (``amp``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from asrhybrid.determinism import cpu_kernels, fix_training_threads
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import CMVN_MODES
from asrhybrid.nnet.augment import Augmentation
from asrhybrid.outputs import atomic_output, last_checkpoint

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """The options of :func:`fit` (stage 6's TrainConfig and the end-to-end E2EConfig add their own)."""

    epochs: int = 8
    optimizer: str = "adam"  # adam, or sgd (Nesterov momentum 0.9)
    lr: float = 1e-3
    final_lr: float | None = None  # decays exponentially per epoch from lr to this (Kaldi nnet3's schedule)
    warmup_steps: int = 0  # the rate rises linearly over the first N optimizer steps (ESPnet's and icefall's warm-up)
    max_duration: float = 120.0  # seconds of speech per batch (over all workers)
    grad_clip: float = 5.0
    seed: int = 0
    num_threads: int = 2  # intra-op threads: fixed, so a seed trains the same model on any machine (determinism.py)
    valid_fraction: float = 0.05  # utterances held out for the per-epoch metrics
    average_last: int = 1  # final.pt averages the last N epochs' models (icefall's --avg)
    amp: bool = True  # bfloat16 autocast on CUDA (no effect on CPU)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW's; SGD's L2), icefall's and ESPnet's weight_decay

    KEYED_WHEN_SET = ("weight_decay",)  # enter a run's completion key only when given (older runs stay done)

    def __post_init__(self):
        if isinstance(self.amp, str):  # parse_options keeps yes/no words as text
            if self.amp.lower() not in ("yes", "no", "true", "false", "on", "off"):
                raise ConfigError(f"amp={self.amp}: yes or no")
            self.amp = self.amp.lower() in ("yes", "true", "on")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer '{self.optimizer}': adam or sgd")
        if self.epochs < 1 or self.lr <= 0 or self.max_duration <= 0 or self.average_last < 1:
            raise ConfigError("epochs, lr, max_duration and average_last must be positive")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay}: at least 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps}: at least 0")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based)."""
        if self.final_lr is None or self.epochs == 1:
            return self.lr
        return self.lr * (self.final_lr / self.lr) ** ((epoch - 1) / (self.epochs - 1))

    def lr_at_step(self, epoch: int, step: int) -> float:
        """The rate of optimizer step ``step`` (0-based, counted over the whole training) in ``epoch``: the
        epoch's, scaled by (step + 1) / warmup_steps while that is below 1."""
        scale = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return self.lr_at(epoch) * scale


@dataclass
class InputOptions(FitConfig):
    """How every model's input is normalised and augmented (stage 6's TrainConfig and stage 9's E2EConfig)."""

    cmvn: str = "global"  # global, utterance or speaker (asrhybrid.features.cmvn.FeatureNormalizer)
    vtlp: float = 0.0  # augmentation (asrhybrid.nnet.augment): VTLP warp factors in [1 - vtlp, 1 + vtlp]
    freq_masks: int = 0  # SpecAugment: bands of up to freq_mask_width mel bins zeroed per utterance
    freq_mask_width: int = 0
    time_masks: int = 0  # and runs of up to time_mask_width frames
    time_mask_width: int = 0
    noise_snr: list = field(default_factory=list)  # [lo, hi] dB: white noise on half the utterances (waveform)

    def __post_init__(self):
        super().__post_init__()
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"cmvn '{self.cmvn}': one of {', '.join(CMVN_MODES)}")
        if (
            self.vtlp < 0
            or self.vtlp >= 1
            or min(self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width) < 0
        ):
            raise ConfigError("vtlp must be in [0, 1), the mask counts and widths at least 0")
        if self.noise_snr and (len(self.noise_snr) != 2 or float(self.noise_snr[0]) > float(self.noise_snr[1])):
            raise ConfigError(f"noise_snr {self.noise_snr}: [lowest, highest] SNR in dB")

    @property
    def augmentation(self):
        return Augmentation(self.vtlp, self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width)


class Objective(Protocol):
    """What :func:`fit` trains a model on."""

    name: str  # what the curves call the model
    loss_name: str  # the loss's key in the history (train_<loss_name>, valid_<loss_name>)
    metric_name: str | None  # a second metric plotted beside the loss (e.g. frame_accuracy), or None
    # optional: loss_parts, the loss's terms that forward() also reports apart (plotted beside it); and
    # plot_epoch(model, valid, exp_dir, epoch, device), figures drawn after each epoch (LAS: attention weights)
    count_name: str  # what ``count`` counts (frames, tokens): the history's valid_<count_name>
    stat_names: tuple[str, ...]  # the summed statistics forward() returns besides count (every worker sums
    # the same keys, so a worker without a batch still takes part in the all-reduce)

    def batches(
        self, cuts, generator: torch.Generator | None, rank: int, world: int, epoch: int = 0
    ) -> Iterator[object | None]:
        """This worker's share of each global batch (None when empty); shuffled and augmented when
        ``generator`` is given (training: ``epoch`` is the 1-based epoch), in order otherwise."""

    def forward(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """(the batch's summed loss; summed statistics, ``count`` among them: what the loss is averaged over)."""

    def metrics(self, sums: dict[str, float]) -> dict[str, float | None]:
        """Metrics (``loss_name`` first) from statistics summed over batches and workers."""


class Workers:
    """This process's rank among the data-parallel workers (torch.distributed, set up by the verb), or alone."""

    def __init__(self):
        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def sum(self, values: list[float], device) -> list[float]:
        if self.dist is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        self.dist.all_reduce(t)
        return t.tolist()

    def sum_dict(self, values: dict[str, float], device) -> dict[str, float]:
        keys = sorted(values)
        return dict(zip(keys, self.sum([values[k] for k in keys], device)))

    def broadcast_model(self, model: nn.Module) -> None:
        if self.dist is not None:
            for tensor in model.state_dict().values():
                self.dist.broadcast(tensor, 0)

    def sum_gradients(self, model: nn.Module) -> None:
        """Every worker's gradients replaced by their sum over the workers (one flat all-reduce)."""
        if self.dist is None:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.dist.all_reduce(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()


def default_device() -> torch.device:
    """CUDA when present (the worker's own GPU under torchrun), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)  # bf16: no loss scaling needed
    return contextlib.nullcontext()


def _add(sums: dict[str, float], more: dict[str, float]) -> None:
    for key, value in more.items():
        sums[key] = sums.get(key, 0.0) + float(value)


def evaluate(
    model: nn.Module, objective: Objective, cuts, device: torch.device, workers: Workers | None = None, amp: bool = True
) -> dict:
    """The objective's metrics over ``cuts`` (in order, no augmentation), with ``count``."""
    workers = workers or Workers()
    model.eval()
    sums = dict.fromkeys(("count", *objective.stat_names), 0.0)
    with torch.no_grad(), autocast(device, amp):
        for batch in objective.batches(cuts, None, workers.rank, workers.world):
            if batch is not None:
                _add(sums, objective.forward(model, batch, device)[1])
    sums = workers.sum_dict(sums, device)
    metrics = objective.metrics(sums) if sums["count"] else {objective.loss_name: None}
    return {**metrics, "count": int(sums["count"])}


def average_models(paths: list[Path]) -> dict:
    """The element-wise mean of the checkpoints' model weights (integer buffers from the last one)."""
    states = [torch.load(p, weights_only=False, map_location="cpu")["model"] for p in paths]
    averaged = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            averaged[name] = sum(s[name].double() for s in states).div(len(states)).to(last.dtype)
        else:
            averaged[name] = last
    return averaged


def fit(
    model: nn.Module,
    objective: Objective,
    train,
    valid,
    exp_dir: Path,
    cfg: FitConfig,
    device: torch.device,
    resume_key: str | None = None,
) -> dict:
    """Train ``model`` (built after ``torch.manual_seed(cfg.seed)``) on ``train`` cuts; returns
    {history, final (the held-out metrics of final weights), averaged_epochs}. The model ends with the final
    weights (the average of the last epochs); the caller writes final.pt."""
    exp_dir = Path(exp_dir)
    workers = Workers()
    leader = workers.rank == 0
    exp_dir.mkdir(parents=True, exist_ok=True)
    fix_training_threads(cfg.num_threads)
    kernels = cpu_kernels()
    log.info("CPU kernels: %s", kernels)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = _optimizer(model, cfg)
    history: list[dict] = []
    step = 0
    first, checkpoint = last_checkpoint([(e, exp_dir / f"epoch-{e}.pt") for e in range(1, cfg.epochs + 1)], resume_key)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history, step = checkpoint["history"], checkpoint["step"]
        log.info("resuming after epoch %d (%s)", first, exp_dir / f"epoch-{first}.pt")
    elif leader:
        remove_old_run(exp_dir)
    workers.broadcast_model(model)
    writer = _tensorboard(exp_dir) if leader else None
    for epoch in range(first + 1, cfg.epochs + 1):
        lr = cfg.lr_at(epoch)
        start = time.time()
        sums, step = _train_epoch(
            model, objective, train, optimizer, generator, workers, cfg, epoch, lr, step, device, writer
        )
        seconds = time.time() - start
        train_metrics = objective.metrics(sums) if sums["count"] else {objective.loss_name: None}
        scores = evaluate(model, objective, valid, device, workers, cfg.amp)
        entry = {
            "epoch": epoch,
            "lr": lr,
            **{f"train_{k}": _round(v) for k, v in train_metrics.items()},
            **{f"valid_{k}": _round(v) for k, v in scores.items() if k != "count"},
            "valid_" + objective.count_name: scores["count"],
        }  # no wall-clock times: a resumed run's
        # history equals an uninterrupted one's (the speed is in the log)
        history.append(entry)
        log.info(
            "%s epoch %d: train %s; held-out %s (%d %s); %.0f %s/s",
            objective.name,
            epoch,
            _format(train_metrics),
            _format({k: v for k, v in scores.items() if k != "count"}),
            scores["count"],
            objective.count_name,
            sums["count"] / max(seconds, 1e-9),
            objective.count_name,
        )
        if leader:
            _report_epoch(writer, objective, history, train_metrics, scores, lr, model, valid, exp_dir, epoch, device)
            _save_epoch(exp_dir, epoch, model, optimizer, step, generator, history, resume_key)
        workers.barrier()  # the checkpoint is on disk before any worker goes on
    averaged, final = _final_weights(model, objective, valid, exp_dir, cfg, history, device, workers)
    if writer is not None:
        writer.close()
    return {
        "history": history,
        "final": final,
        "averaged_epochs": averaged,
        "workers": workers.world,
        "leader": leader,
        "device": device.type,
        "kernels": kernels,
    }


def _optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        if cfg.weight_decay:
            return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def _train_epoch(model, objective, train, optimizer, generator, workers, cfg, epoch, lr, step, device, writer):
    """One pass over the training batches: (the summed statistics over every worker, the step after it)."""
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = lr
    sums = dict.fromkeys(("count", *objective.stat_names), 0.0)
    batches = objective.batches(train, generator, workers.rank, workers.world, epoch)
    for batch in tqdm(
        batches, desc=f"{objective.name} epoch {epoch}", unit="batch", leave=False, disable=workers.rank != 0
    ):
        if cfg.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at_step(epoch, step)
        optimizer.zero_grad()
        loss, stats = None, {"count": 0.0}
        if batch is not None:
            with autocast(device, cfg.amp):
                loss, stats = objective.forward(model, batch, device)
        (n_global,) = workers.sum([stats["count"]], device)
        if loss is not None and stats["count"]:
            (loss / max(n_global, 1)).backward()
            _add(sums, stats)
            if writer is not None:
                writer.add_scalar(f"train/{objective.loss_name}_batch", float(loss.detach()) / stats["count"], step + 1)
        workers.sum_gradients(model)
        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if torch.isfinite(norm):
            optimizer.step()
        else:  # every worker sees the same summed gradients, so all skip it (AMP's GradScaler skips so too)
            log.warning(
                "%s epoch %d: a step's gradient is not finite (norm %s): step skipped", objective.name, epoch, norm
            )
        step += 1
    return workers.sum_dict(sums, device), step


def _report_epoch(writer, objective, history, train_metrics, scores, lr, model, valid, exp_dir, epoch, device) -> None:
    """What a researcher looks at after an epoch: TensorBoard's scalars, curves.png, and the objective's own
    pictures (LAS's attention weights on held-out utterances)."""
    for k, v in train_metrics.items():
        if v is not None:
            writer.add_scalar(f"train/{k}", v, epoch)
    for k, v in scores.items():
        if v is not None and k != "count":
            writer.add_scalar(f"valid/{k}", v, epoch)
    writer.add_scalar("train/lr", lr, epoch)
    writer.flush()
    plot_curves(
        history,
        exp_dir / "curves.png",
        objective.name,
        objective.loss_name,
        objective.metric_name,
        getattr(objective, "loss_parts", ()),
    )
    if hasattr(objective, "plot_epoch"):
        objective.plot_epoch(model, valid, exp_dir, epoch, device)


def _save_epoch(exp_dir, epoch, model, optimizer, step, generator, history, resume_key) -> None:
    """epoch-N.pt: everything a killed run resumes from. Written last: it marks the epoch finished."""
    with atomic_output(exp_dir / f"epoch-{epoch}.pt") as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "resume_key": resume_key,
            },
            tmp,
        )


def _final_weights(model, objective, valid, exp_dir, cfg, history, device, workers) -> tuple[list[int], dict]:
    """The model's final weights, the average of the last ``average_last`` epochs (icefall's --avg): (those
    epochs, the held-out metrics of the final weights)."""
    averaged = list(range(max(1, cfg.epochs - cfg.average_last + 1), cfg.epochs + 1))
    final = {k.removeprefix("valid_"): v for k, v in history[-1].items() if k.startswith("valid_")}
    if len(averaged) > 1:
        model.load_state_dict(average_models([exp_dir / f"epoch-{e}.pt" for e in averaged]))
        scores = evaluate(model, objective, valid, device, workers, cfg.amp)
        final = {k: _round(v) for k, v in scores.items()}
        log.info(
            "final weights: the average of epochs %s: held-out %s",
            averaged,
            _format({k: v for k, v in scores.items() if k != "count"}),
        )
    return averaged, final


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} -" for k, v in metrics.items())


def remove_old_run(exp_dir: Path) -> None:
    """A run that starts over leaves nothing of an earlier one (its checkpoints, events, curves)."""
    old = sorted(exp_dir.glob("epoch-*.pt")) + [
        p
        for p in (
            exp_dir / "tensorboard",
            exp_dir / "curves.png",
            exp_dir / "attention",
            exp_dir / "final.pt",
            exp_dir / "train.json",
        )
        if p.exists()
    ]
    if old:
        log.info("%s: starting over: removing %d files of an earlier run", exp_dir, len(old))
    for path in old:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _tensorboard(exp_dir: Path):
    return SummaryWriter(log_dir=str(exp_dir / "tensorboard"))


def plot_curves(
    history: list[dict],
    png: Path,
    title: str,
    loss: str = "ce",
    metric: str | None = "frame_accuracy",
    parts: tuple[str, ...] = (),
) -> Path:
    """The loss, its terms apart (``parts``) and a second metric per epoch, training and held-out, as a PNG."""
    import matplotlib  # heavy, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history]
    names = [loss, *parts] + ([metric] if metric else [])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        scale = 100 if "accuracy" in name or "error" in name else 1
        for split, label in (("train", "train"), ("valid", "held-out")):
            points = [
                (e["epoch"], scale * e[f"{split}_{name}"]) for e in history if e.get(f"{split}_{name}") is not None
            ]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        ax.set(
            xlabel="epoch", ylabel=name.replace("_", " ") + (" (%)" if scale == 100 else ""), title=f"{title}: {name}"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return png
