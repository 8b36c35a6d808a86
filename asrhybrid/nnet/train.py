"""Stage 6: frame cross-entropy training of a hybrid acoustic model on senone alignments (Sak 2014's recipe).

Batches come from a Lhotse sampler over the cuts (by total duration), with
features read from disk per batch and normalised with the global CMVN, and
targets read by key from the tree stage's ``ali_pdf.{ark,scp}``: nothing
proportional to the corpus is held in memory. Padding repeats an utterance's
last frame (Kaldi's edge convention for splicing) and its targets are ignored
by the loss. Every epoch ends with a checkpoint (model, optimiser, RNG
states, the log so far); a killed run resumes after its last epoch when the
checkpoint was made under the same ``resume_key``.

Frame accuracy (Sak 2014's metric) is measured after every epoch on held-out
training utterances, as Kaldi's nnet recipes validate on utterances held
out of their egs: a share ``valid_fraction`` of the aligned utterances,
chosen by a hash of their ids (so no list of the corpus is kept), is never
trained on.

Systems: ``dnn`` (spliced frames, asrhybrid.nnet.mlp), ``lstmp``
(asrhybrid.nnet.lstmp), ``fast_slow`` (asrhybrid.nnet.fast_slow).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asrhybrid.data.manifests import load_cuts
from asrhybrid.errors import ConfigError
from asrhybrid.kaldi_io import AlignmentTable, iter_alignments
from asrhybrid.nnet.fast_slow import FastSlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.nnet.priors import log_priors
from asrhybrid.recipe.outputs import atomic_output, last_checkpoint, write_text_atomic

log = logging.getLogger(__name__)

SYSTEMS = ("dnn", "lstmp", "fast_slow")


@dataclass
class TrainConfig:
    system: str = "lstmp"
    epochs: int = 8
    lr: float = 1e-3
    max_duration: float = 120.0  # seconds of speech per batch
    grad_clip: float = 5.0
    seed: int = 0
    silence_scale: float = 2.7  # silence states' counts are divided by this for the priors (Sak 2014)
    valid_fraction: float = 0.05  # aligned utterances held out for the frame accuracy
    model: dict = field(default_factory=dict)  # the system's model options (e.g. cells, proj, layers, delay)


class FrameDNN(nn.Module):
    """The DNN baseline over padded batches: each frame spliced with +-``context`` frames, an MLP on each."""

    def __init__(self, feat_dim: int, num_pdfs: int, context: int = 5, hidden: int = 512, layers: int = 4):
        super().__init__()
        self.mlp = SplicedMLP(feat_dim, num_pdfs, context, hidden, layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.mlp(splice(x, self.mlp.context)) for x in feats])


def build_model(system: str, feat_dim: int, num_pdfs: int, options: dict) -> nn.Module:
    classes = {"dnn": FrameDNN, "lstmp": LstmpAM, "fast_slow": FastSlowAM}
    if system not in classes:
        raise ConfigError(f"unknown acoustic model '{system}' (systems: {', '.join(SYSTEMS)})")
    try:
        return classes[system](feat_dim, num_pdfs, **options)
    except TypeError as e:
        raise ConfigError(f"{system}: bad model option: {e}") from None


def held_out(utt: str, fraction: float) -> bool:
    """Whether an utterance is in the validation share (a hash of its id: stable, no list kept)."""
    return zlib.crc32(utt.encode("utf-8")) % 10_000 < fraction * 10_000


def _batches(cuts, targets: AlignmentTable, mean, std, max_duration: float, generator: torch.Generator | None):
    """(features [B, T, D], targets [B, T] with -100 on padding) batches of the aligned ``cuts``."""
    from lhotse.dataset import SimpleCutSampler

    seed = int(torch.randint(1 << 30, (1,), generator=generator)) if generator is not None else 0
    sampler = SimpleCutSampler(cuts.filter(lambda c: c.id in targets), max_duration=max_duration,
                               shuffle=generator is not None, seed=seed)
    for batch in sampler:
        feats = [torch.from_numpy(((c.load_features() - mean) / std).astype(np.float32)) for c in batch]
        T = max(f.shape[0] for f in feats)
        x = torch.stack([torch.cat([f, f[-1:].expand(T - f.shape[0], -1)]) for f in feats])  # last frame repeated
        y = torch.full((len(feats), T), -100, dtype=torch.int64)
        for b, cut in enumerate(batch):
            ali = torch.as_tensor(targets[cut.id])
            y[b, : len(ali)] = ali[: T]
        yield x, y


def _frame_accuracy(model, cuts, targets, mean, std, max_duration) -> tuple[float, int]:
    """(frame accuracy, frames) on aligned ``cuts``."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in _batches(cuts, targets, mean, std, max_duration, None):
            keep = y != -100
            correct += int((model(x).argmax(-1)[keep] == y[keep]).sum())
            total += int(keep.sum())
    return correct / max(total, 1), total


def train_am(cuts_path: Path, ali_pdf: Path, num_pdfs: int, silence_pdfs: set[int], cmvn_mean: np.ndarray,
             cmvn_std: np.ndarray, exp_dir: Path, cfg: TrainConfig, resume_key: str | None = None) -> dict:
    """Train ``cfg.system`` into ``exp_dir`` (epoch-N.pt per epoch, final.pt, train.json); returns the summary."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    cuts = load_cuts(cuts_path)
    train = cuts.filter(lambda c: not held_out(c.id, cfg.valid_fraction))
    valid = cuts.filter(lambda c: held_out(c.id, cfg.valid_fraction))
    targets = AlignmentTable(ali_pdf)
    model = build_model(cfg.system, int(cmvn_mean.shape[0]), num_pdfs, cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict] = []
    first, checkpoint = last_checkpoint([(e, exp_dir / f"epoch-{e}.pt") for e in range(1, cfg.epochs + 1)], resume_key)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        history = checkpoint["history"]
        log.info("resuming after epoch %d (%s)", first, exp_dir / f"epoch-{first}.pt")
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100, reduction="sum")
    for epoch in range(first + 1, cfg.epochs + 1):
        model.train()
        loss_sum = frames = 0.0
        for x, y in _batches(train, targets, cmvn_mean, cmvn_std, cfg.max_duration, generator):
            logits = model(x)
            loss = loss_fn(logits.reshape(-1, num_pdfs), y.reshape(-1))
            n = int((y != -100).sum())
            optimizer.zero_grad()
            (loss / max(n, 1)).backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            loss_sum += loss.item()
            frames += n
        accuracy = _frame_accuracy(model, valid, targets, cmvn_mean, cmvn_std, cfg.max_duration)
        entry = {"epoch": epoch, "train_ce": round(loss_sum / max(frames, 1), 4), "valid_frames": accuracy[1],
                 "valid_frame_accuracy": round(accuracy[0], 4) if accuracy[1] else None}
        history.append(entry)
        log.info("%s epoch %d: train CE %.3f, held-out frame accuracy %s (%d frames)", cfg.system, epoch,
                 entry["train_ce"], f"{100 * accuracy[0]:.1f}%" if accuracy[1] else "-", accuracy[1])
        with atomic_output(exp_dir / f"epoch-{epoch}.pt") as tmp:  # written last: the epoch is finished
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                        "resume_key": resume_key}, tmp)
    counts = np.zeros(num_pdfs)
    for _, pdfs in iter_alignments(ali_pdf):  # the training alignments' state frequencies
        counts += np.bincount(pdfs, minlength=num_pdfs)
    log_prior = log_priors(counts, silence_pdfs, cfg.silence_scale)
    with atomic_output(exp_dir / "final.pt") as tmp:
        torch.save({"model": model.state_dict(), "config": asdict(cfg), "num_pdfs": num_pdfs,
                    "feat_mean": cmvn_mean, "feat_std": cmvn_std, "log_prior": log_prior}, tmp)
    targets.close()
    summary = {"system": cfg.system, "epochs": history,
               "parameters": sum(p.numel() for p in model.parameters())}
    write_text_atomic(exp_dir / "train.json", json.dumps(summary, indent=1) + "\n")
    return summary


def load_am(exp_dir: Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, its final.pt) of a trained system."""
    ckpt = torch.load(Path(exp_dir) / "final.pt", weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    model = build_model(cfg.system, int(ckpt["feat_mean"].shape[0]), ckpt["num_pdfs"], cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def compute_loglikes(cuts_path: Path, exp_dir: Path, out_ark: Path, acwt: float = 1.0, prior_scale: float = 1.0,
                     max_duration: float = 120.0) -> int:
    """Scaled log-likelihoods acwt x (log posterior - prior_scale x log prior) of every cut, [T, num_pdfs] per
    utterance, into a Kaldi float-matrix table ``out_ark`` (+ .scp): what the decoder reads. Returns the count."""
    from lhotse.dataset import SimpleCutSampler

    from asrhybrid.kaldi_io import matrix_table_writer
    from asrhybrid.nnet.priors import scaled_loglikes

    model, final = load_am(exp_dir)
    mean, std = final["feat_mean"], final["feat_std"]
    done = 0
    with matrix_table_writer(out_ark) as write, torch.no_grad():
        for batch in SimpleCutSampler(load_cuts(cuts_path), max_duration=max_duration):
            feats = [torch.from_numpy(((c.load_features() - mean) / std).astype(np.float32)) for c in batch]
            T = max(f.shape[0] for f in feats)
            x = torch.stack([torch.cat([f, f[-1:].expand(T - f.shape[0], -1)]) for f in feats])
            log_post = torch.log_softmax(model(x), dim=-1)
            for cut, f, lp in zip(batch, feats, log_post):
                write(cut.id, scaled_loglikes(lp[: f.shape[0]].numpy(), final["log_prior"], acwt, prior_scale))
                done += 1
    return done
