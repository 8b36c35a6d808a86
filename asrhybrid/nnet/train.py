"""Stage 6: frame cross-entropy training of a hybrid acoustic model on senone alignments (Sak 2014's recipe).

Batches come from a Lhotse sampler over the cuts (by total duration), with
features read from disk per batch and normalised with the global CMVN, and
targets read by key from the tree stage's ``ali_pdf.{ark,scp}``: nothing
proportional to the corpus is held in memory. Padding repeats an utterance's
last frame (Kaldi's edge convention for splicing) and its targets are ignored
by the loss. Every epoch ends with a checkpoint (model, optimiser, RNG
states, the log so far); a killed run resumes after its last epoch when the
checkpoint was made under the same ``resume_key``.

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

Data parallel: launched by ``torchrun`` (the verb joins the process group),
every worker draws the same global batch from the same sampler state and
takes its share of the batch's utterances; the loss is each worker's sum
over its frames divided by the global frame count, and gradients are
summed over the workers with one all-reduce. So N workers take exactly the
steps of one process with the same batch, up to float summation order.

Outputs per experiment directory: epoch-N.pt, final.pt (the last epoch's
model, or the average of the last ``average_last`` epochs, icefall's
--avg), train.json, curves.png (loss and frame accuracy per epoch), and
TensorBoard event files in tensorboard/.

Systems: ``dnn`` (spliced frames, asrhybrid.nnet.mlp), ``lstmp``
(asrhybrid.nnet.lstmp), ``fast_slow`` (asrhybrid.nnet.fast_slow).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from asrhybrid.config import SYSTEMS
from asrhybrid.data.manifests import load_cuts
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import normalize, normalized_features
from asrhybrid.kaldi_io import AlignmentTable, iter_alignments
from asrhybrid.nnet.augment import Augmentation
from asrhybrid.nnet.fast_slow import FastSlowAM, SlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.nnet.priors import log_priors, scaled_loglikes
from asrhybrid.recipe.outputs import atomic_output, last_checkpoint, write_text_atomic

log = logging.getLogger(__name__)


IGNORE = -100  # targets of padding and context frames


@dataclass
class TrainConfig:
    system: str = "lstmp"
    epochs: int = 8
    optimizer: str = "adam"  # adam, or sgd (Nesterov momentum 0.9)
    lr: float = 1e-3
    final_lr: float | None = None  # decays exponentially per epoch from lr to this (Kaldi nnet3's schedule)
    max_duration: float = 120.0  # seconds of speech per batch (over all workers)
    chunk_frames: int = 0  # 0: whole utterances; else chunks of this many target frames
    chunk_left_context: int = 40  # frames before a chunk's first target that warm up the recurrent state
    grad_clip: float = 5.0
    seed: int = 0
    silence_scale: float = 2.7  # silence states' counts are divided by this for the priors (Sak 2014)
    valid_fraction: float = 0.05  # aligned utterances held out for the frame accuracy
    average_last: int = 1  # final.pt averages the last N epochs' models (icefall's --avg)
    fast_weight: float = 0.5  # fast_slow: weight of the fast AM's own cross-entropy in the loss
    amp: bool = True  # bfloat16 autocast on CUDA (no effect on CPU)
    cmvn: str = "global"  # global: the training set's mean and std; utterance: each utterance's own mean
    # (its speaker's and channel's offset removed) and the global std
    vtlp: float = 0.0  # augmentation (asrhybrid.nnet.augment): VTLP warp factors in [1 - vtlp, 1 + vtlp]
    freq_masks: int = 0  # SpecAugment: bands of up to freq_mask_width mel bins zeroed per utterance
    freq_mask_width: int = 0
    time_masks: int = 0  # and runs of up to time_mask_width frames
    time_mask_width: int = 0
    model: dict = field(default_factory=dict)  # the system's model options (e.g. cells, proj, layers, delay)

    def __post_init__(self):
        if isinstance(self.amp, str):  # parse_options keeps yes/no words as text
            if self.amp.lower() not in ("yes", "no", "true", "false", "on", "off"):
                raise ConfigError(f"amp={self.amp}: yes or no")
            self.amp = self.amp.lower() in ("yes", "true", "on")
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown acoustic model '{self.system}' (systems: {', '.join(SYSTEMS)})")
        if self.cmvn not in ("global", "utterance"):
            raise ConfigError(f"cmvn '{self.cmvn}': global or utterance")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer '{self.optimizer}': adam or sgd")
        if self.vtlp < 0 or self.vtlp >= 1 or min(self.freq_masks, self.freq_mask_width, self.time_masks,
                                                   self.time_mask_width) < 0:
            raise ConfigError("vtlp must be in [0, 1), the mask counts and widths at least 0")
        if self.epochs < 1 or self.lr <= 0 or self.max_duration <= 0 or self.average_last < 1:
            raise ConfigError("epochs, lr, max_duration and average_last must be positive")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (1-based)."""
        if self.final_lr is None or self.epochs == 1:
            return self.lr
        return self.lr * (self.final_lr / self.lr) ** ((epoch - 1) / (self.epochs - 1))

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.vtlp, self.freq_masks, self.freq_mask_width, self.time_masks, self.time_mask_width)


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


def _sampler(cuts, max_duration: float, generator: torch.Generator | None):
    from lhotse.dataset import SimpleCutSampler

    seed = int(torch.randint(1 << 30, (1,), generator=generator)) if generator is not None else 0
    # world_size=1: every worker draws the same global batches and shards them itself (see the module's doc)
    return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=generator is not None, seed=seed,
                            world_size=1, rank=0)


def _batches(cuts, targets: AlignmentTable, mean, std, max_duration: float, generator: torch.Generator | None,
             chunk: int = 0, left: int = 0, right: int = 0, rank: int = 0, world: int = 1, per_utterance: bool = False,
             augmentation: Augmentation | None = None):
    """(features [B, T, D], targets [B, T] with IGNORE outside the chunks' targets) of this worker's share of
    each global batch of the aligned ``cuts``; (None, None) when its share of a batch is empty. With an active
    ``augmentation`` (training), each utterance is warped before and masked after the normalisation, with draws
    from its own generator, seeded by the batch's draw from ``generator`` and the utterance's id (every worker
    draws the batch's seed, so the generators stay in step whatever each one's share)."""
    augmentation = augmentation if augmentation is not None and augmentation.active and generator is not None else None
    for batch in _sampler(cuts.filter(partial(_cut_aligned, targets=targets)), max_duration, generator):
        batch_seed = int(torch.randint(1 << 30, (1,), generator=generator)) if augmentation is not None else 0
        xs, ys = [], []
        for cut in list(batch)[rank::world]:
            if augmentation is None:
                f = normalized_features(cut, mean, std, per_utterance)
            else:
                draws = torch.Generator().manual_seed(batch_seed ^ zlib.crc32(cut.id.encode("utf-8")))
                warped = augmentation.warp(cut.load_features(), cut.sampling_rate, draws)
                f = augmentation.mask(torch.from_numpy(normalize(warped, mean, std, per_utterance)), draws)
            ali = torch.as_tensor(targets[cut.id])[: f.shape[0]]
            for a, s, e, b in chunk_spans(len(ali), chunk, left, right):
                y = torch.full((b - a,), IGNORE, dtype=torch.int64)
                y[s - a : e - a] = ali[s:e]
                xs.append(f[a:b])
                ys.append(y)
        if not xs:
            yield None, None
            continue
        T = max(len(y) for y in ys)
        yield pad_batch(xs), torch.stack([torch.cat([y, y.new_full((T - len(y),), IGNORE)]) for y in ys])


class _Workers:
    """This process's rank among the data-parallel workers (torch.distributed, set up by the verb), or alone."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def sum(self, values: list[float], device) -> list[float]:
        if self.dist is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        self.dist.all_reduce(t)
        return t.tolist()

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
    import os

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)  # bf16: no loss scaling needed
    return contextlib.nullcontext()


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


def evaluate(model: nn.Module, cuts, targets: AlignmentTable, mean, std, max_duration: float, device: torch.device,
             workers: _Workers | None = None, amp: bool = True, per_utterance: bool = False) -> dict:
    """Cross-entropy and frame accuracy over whole utterances of aligned ``cuts``: {ce, frame_accuracy, frames}."""
    workers = workers or _Workers()
    model.eval()
    ce = correct = frames = 0.0
    with torch.no_grad(), _autocast(device, amp):
        for x, y in _batches(cuts, targets, mean, std, max_duration, None, rank=workers.rank, world=workers.world,
                             per_utterance=per_utterance):
            if x is None:
                continue
            x, y = x.to(device), y.to(device)
            _, batch_ce, batch_correct = _losses(model, x, y, 0.0)
            ce += float(batch_ce)
            correct += batch_correct
            frames += int((y != IGNORE).sum())
    ce, correct, frames = workers.sum([ce, correct, frames], device)
    if not frames:
        return {"ce": None, "frame_accuracy": None, "frames": 0}
    return {"ce": round(ce / frames, 4), "frame_accuracy": round(correct / frames, 4), "frames": int(frames)}


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


def train_am(cuts_path: Path, ali_pdf: Path, num_pdfs: int, silence_pdfs: set[int], cmvn_mean: np.ndarray,
             cmvn_std: np.ndarray, exp_dir: Path, cfg: TrainConfig, resume_key: str | None = None,
             device: torch.device | str | None = None) -> dict:
    """Train ``cfg.system`` into ``exp_dir`` (see the module's doc for the files); returns the summary."""
    exp_dir = Path(exp_dir)
    device = torch.device(device) if device is not None else default_device()
    workers = _Workers()
    leader = workers.rank == 0
    exp_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    cuts = load_cuts(cuts_path)
    train = cuts.filter(partial(_cut_held_out, fraction=cfg.valid_fraction, keep=False))
    valid = cuts.filter(partial(_cut_held_out, fraction=cfg.valid_fraction, keep=True))
    targets = AlignmentTable(ali_pdf)
    model = build_model(cfg.system, int(cmvn_mean.shape[0]), num_pdfs, cfg.model).to(device)
    if cfg.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
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
        _remove_old_run(exp_dir)
    workers.broadcast_model(model)
    writer = _tensorboard(exp_dir) if leader else None
    context = getattr(model, "right_context", 0)
    log.info("%s: %d parameters, %s, %d worker(s); chunks: %s", cfg.system, sum(p.numel() for p in model.parameters()),
             device, workers.world, f"{cfg.chunk_frames} frames, left context {cfg.chunk_left_context}, right "
             f"{context}" if cfg.chunk_frames > 0 else "whole utterances")
    for epoch in range(first + 1, cfg.epochs + 1):
        model.train()
        lr = cfg.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ce_sum = correct = frames = 0.0
        start = time.time()
        batches = _batches(train, targets, cmvn_mean, cmvn_std, cfg.max_duration, generator, cfg.chunk_frames,
                           cfg.chunk_left_context, context, workers.rank, workers.world, cfg.cmvn == "utterance",
                           cfg.augmentation)
        for x, y in tqdm(batches, desc=f"{cfg.system} epoch {epoch}", unit="batch", leave=False, disable=not leader):
            optimizer.zero_grad()
            n_local = 0 if y is None else int((y != IGNORE).sum())
            (n_global,) = workers.sum([n_local], device)
            if n_local:
                x, y = x.to(device), y.to(device)
                with _autocast(device, cfg.amp):
                    loss, ce, ok = _losses(model, x, y, cfg.fast_weight)
                (loss / max(n_global, 1)).backward()
                ce_sum, correct = ce_sum + float(ce), correct + ok
            workers.sum_gradients(model)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            frames += n_local
            if writer is not None and n_local:
                writer.add_scalar("train/ce_batch", float(ce) / n_local, step)
        ce_sum, correct, frames = workers.sum([ce_sum, correct, frames], device)
        seconds = time.time() - start
        scores = evaluate(model, valid, targets, cmvn_mean, cmvn_std, cfg.max_duration, device, workers, cfg.amp,
                          cfg.cmvn == "utterance")
        entry = {"epoch": epoch, "lr": lr, "train_ce": round(ce_sum / max(frames, 1), 4),
                 "train_frame_accuracy": round(correct / max(frames, 1), 4), "valid_ce": scores["ce"],
                 "valid_frame_accuracy": scores["frame_accuracy"], "valid_frames": scores["frames"]}
        history.append(entry)
        log.info("%s epoch %d: train CE %.3f (frame accuracy %.1f%%), held-out CE %s, frame accuracy %s "
                 "(%d frames); %.0f frames/s", cfg.system, epoch, entry["train_ce"],
                 100 * entry["train_frame_accuracy"], scores["ce"],
                 f"{100 * scores['frame_accuracy']:.1f}%" if scores["frames"] else "-", scores["frames"],
                 frames / max(seconds, 1e-9))
        if leader:
            writer.add_scalar("train/ce", entry["train_ce"], epoch)
            writer.add_scalar("train/frame_accuracy", entry["train_frame_accuracy"], epoch)
            writer.add_scalar("train/lr", lr, epoch)
            if scores["frames"]:
                writer.add_scalar("valid/ce", scores["ce"], epoch)
                writer.add_scalar("valid/frame_accuracy", scores["frame_accuracy"], epoch)
            writer.flush()
            plot_curves(history, exp_dir / "curves.png", cfg.system)
            with atomic_output(exp_dir / f"epoch-{epoch}.pt") as tmp:  # written last: the epoch is finished
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                            "step": step, "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                            "history": history, "resume_key": resume_key}, tmp)
        workers.barrier()  # the checkpoint is on disk before any worker goes on
    averaged = list(range(max(1, cfg.epochs - cfg.average_last + 1), cfg.epochs + 1))
    final_scores = history[-1]
    if len(averaged) > 1:
        model.load_state_dict(average_models([exp_dir / f"epoch-{e}.pt" for e in averaged]))
        scores = evaluate(model, valid, targets, cmvn_mean, cmvn_std, cfg.max_duration, device, workers, cfg.amp,
                          cfg.cmvn == "utterance")
        final_scores = {"valid_ce": scores["ce"], "valid_frame_accuracy": scores["frame_accuracy"]}
        log.info("final.pt: the average of epochs %s: held-out frame accuracy %s", averaged,
                 f"{100 * scores['frame_accuracy']:.1f}%" if scores["frames"] else "-")
    targets.close()
    summary = {"system": cfg.system, "epochs": history, "parameters": sum(p.numel() for p in model.parameters()),
               "final": {"averaged_epochs": averaged, "valid_ce": final_scores["valid_ce"],
                         "valid_frame_accuracy": final_scores["valid_frame_accuracy"]},
               "workers": workers.world, "device": device.type}
    if leader:
        counts = np.zeros(num_pdfs)
        for _, pdfs in iter_alignments(ali_pdf):  # the training alignments' state frequencies
            counts += np.bincount(pdfs, minlength=num_pdfs)
        log_prior = log_priors(counts, silence_pdfs, cfg.silence_scale)
        with atomic_output(exp_dir / "final.pt") as tmp:
            torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "config": asdict(cfg),
                        "num_pdfs": num_pdfs, "feat_mean": cmvn_mean, "feat_std": cmvn_std, "log_prior": log_prior}, tmp)
        write_text_atomic(exp_dir / "train.json", json.dumps(summary, indent=1) + "\n")
        writer.close()
    workers.barrier()
    return summary


def _remove_old_run(exp_dir: Path) -> None:
    """A run that starts over leaves nothing of an earlier one (its checkpoints, events, curves)."""
    import shutil

    old = sorted(exp_dir.glob("epoch-*.pt")) + [p for p in (exp_dir / "tensorboard", exp_dir / "curves.png",
                                                            exp_dir / "final.pt", exp_dir / "train.json") if p.exists()]
    if old:
        log.info("%s: starting over: removing %d files of an earlier run", exp_dir, len(old))
    for path in old:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _tensorboard(exp_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(exp_dir / "tensorboard"))


def plot_curves(history: list[dict], png: Path, title: str) -> Path:
    """Cross-entropy and frame accuracy per epoch, training and held-out, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key, label, ax, scale in (("train_ce", "train", loss_ax, 1), ("valid_ce", "held-out", loss_ax, 1),
                                  ("train_frame_accuracy", "train", acc_ax, 100),
                                  ("valid_frame_accuracy", "held-out", acc_ax, 100)):
        points = [(e["epoch"], scale * e[key]) for e in history if e.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy (nats/frame)", title=f"{title}: loss")
    acc_ax.set(xlabel="epoch", ylabel="frame accuracy (%)", title=f"{title}: senone frame accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return png


def load_am(exp_dir: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, its final.pt) of a trained system."""
    ckpt = torch.load(Path(exp_dir) / "final.pt", weights_only=False, map_location="cpu")
    cfg = TrainConfig(**ckpt["config"])
    model = build_model(cfg.system, int(ckpt["feat_mean"].shape[0]), ckpt["num_pdfs"], cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def utterance_cmvn(final: dict) -> bool:
    """Whether a trained system normalises each utterance by its own mean (TrainConfig.cmvn)."""
    return final["config"].get("cmvn", "global") == "utterance"


def iter_loglikes(model: nn.Module, final: dict, cuts, acwt: float = 1.0, prior_scale: float = 1.0,
                  max_duration: float = 120.0, device: torch.device | str = "cpu") -> Iterator[tuple[object, np.ndarray]]:
    """(cut, [T, num_pdfs] scaled log-likelihoods acwt x (log posterior - prior_scale x log prior)) per cut, in the
    cuts' order: what the decoder reads, in memory (decoding, transcribe) or from compute-loglikes' archive."""
    from lhotse import CutSet
    from lhotse.dataset import SimpleCutSampler

    mean, std, per_utterance = final["feat_mean"], final["feat_std"], utterance_cmvn(final)
    cuts = cuts if isinstance(cuts, CutSet) else CutSet.from_cuts(cuts)
    model.eval()
    with torch.no_grad():
        for batch in SimpleCutSampler(cuts, max_duration=max_duration, world_size=1, rank=0):
            feats = [normalized_features(c, mean, std, per_utterance) for c in batch]
            log_post = torch.log_softmax(model(pad_batch(feats).to(device)).float(), dim=-1).cpu()
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
    with matrix_table_writer(out_ark) as write:
        for cut, loglikes in iter_loglikes(model, final, load_cuts(cuts_path), acwt, prior_scale, max_duration, device):
            write(cut.id, loglikes)
            done += 1
    return done
