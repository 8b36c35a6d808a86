"""A trained hybrid acoustic model: loading it (speaker-adapted or not) and its pseudo log-likelihoods, in memory
for the decoder or into a Kaldi matrix table (compute-loglikes)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler
from torch import nn

from asrhybrid.data.manifests import load_cuts
from asrhybrid.features.cmvn import FeatureNormalizer, speaker_of
from asrhybrid.kaldi_io import matrix_table_writer
from asrhybrid.nnet.adapt import SpeakerAdaptedAM
from asrhybrid.nnet.batches import pad_batch
from asrhybrid.nnet.models import build_model
from asrhybrid.nnet.priors import scaled_loglikes
from asrhybrid.nnet.train import TrainConfig
from asrhybrid.nnet.trainer import (
    default_device,
)


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
