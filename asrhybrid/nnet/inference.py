"""A trained hybrid acoustic model: loading it (speaker-adapted or not) and its pseudo log-likelihoods, in memory
for the decoder or into a Kaldi matrix table (compute-loglikes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from lhotse import CutSet
from lhotse.dataset import SimpleCutSampler
from torch import nn

from asrhybrid.data.manifests import load_cuts
from asrhybrid.determinism import intra_op_threads
from asrhybrid.features.cmvn import FeatureNormalizer, speaker_of
from asrhybrid.jobs import InJob, JobsConfig, run_jobs, split_jobs, unfinished
from asrhybrid.kaldi_tables import matrix_table_writer, merge_tables
from asrhybrid.nnet.adapt import SpeakerAdaptedAM
from asrhybrid.nnet.batches import pad_batch
from asrhybrid.nnet.checkpoint import AM, TrainedSystem
from asrhybrid.nnet.models import ChainAM, build_model
from asrhybrid.nnet.priors import scaled_loglikes
from asrhybrid.nnet.train import TrainConfig
from asrhybrid.nnet.trainer import default_device
from asrhybrid.options import is_chain
from asrhybrid.outputs import resume_or_clear, write_text_atomic

# A chain model decodes at acoustic scale 1.0 and its lattices keep its scores x 10 (Kaldi: --acwt 1.0
# --post-decode-acwt 10.0), so the decoder's default acwt 0.1, its beams and the LM-weight grid of scoring
# mean for it what they mean for a cross-entropy model.
CHAIN_OUTPUT_SCALE = 10.0


def load_am(exp_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainedSystem]:
    """(model in eval mode, the trained system) of a hybrid system's directory; an adapted system's model carries
    its speakers' transforms (asrhybrid.nnet.adapt)."""
    trained = TrainedSystem.load(exp_dir, AM)
    cfg = TrainConfig(**trained.config)
    model = build_model(cfg.system, trained.feat_dim, trained.num_outputs, cfg.model)
    model.load_state_dict(trained.weights)
    if isinstance(model, ChainAM):
        model.subsampling = frame_step(trained)
    if trained.adaptation:
        model = SpeakerAdaptedAM.from_state(model, trained.feat_dim, trained.adaptation)
    return model.to(device).eval(), trained


def frame_step(trained: TrainedSystem) -> int:
    """Input frames per output frame: a chain system's frame subsampling factor, else 1."""
    return (
        int((trained.config.get("chain") or {}).get("frame_subsampling_factor", 1)) if is_chain(trained.system) else 1
    )


def iter_loglikes(
    model: nn.Module,
    trained: TrainedSystem,
    cuts,
    acwt: float = 1.0,
    prior_scale: float = 1.0,
    max_duration: float = 120.0,
    device: torch.device | str = "cpu",
    normalizer: FeatureNormalizer | None = None,
) -> Iterator[tuple[object, np.ndarray]]:
    """(cut, [T, num_pdfs] scaled log-likelihoods acwt x (log posterior - prior_scale x log prior); of a chain
    model, acwt x CHAIN_OUTPUT_SCALE x its output) per cut, in the
    cuts' order: what the decoder reads, in memory (decoding, transcribe) or from compute-loglikes' archive.
    ``normalizer``: built over ``cuts`` when not given (give it when ``cuts`` are a share of a set whose
    speakers' statistics span the whole set)."""
    cuts = cuts if isinstance(cuts, CutSet) else CutSet.from_cuts(cuts)
    normalizer = normalizer or trained.normalizer(cuts)
    chain, step = is_chain(trained.system), frame_step(trained)
    model.eval()
    with torch.no_grad():
        for batch in SimpleCutSampler(cuts, max_duration=max_duration, world_size=1, rank=0):
            feats = [normalizer(c) for c in batch]
            x = pad_batch(feats).to(device)
            if isinstance(model, SpeakerAdaptedAM):  # each cut's speaker's transforms
                logits = model(x, [speaker_of(c) for c in batch], [c.id for c in batch])
            else:
                logits = model(x)
            if chain:  # log-likelihoods already (the denominator normalised them in training): no priors
                scores = (CHAIN_OUTPUT_SCALE * acwt * logits[:, ::step].float()).cpu()
            else:
                scores = torch.log_softmax(logits.float(), dim=-1).cpu()
            for cut, f, s in zip(batch, feats, scores):
                s = s[: -(-f.shape[0] // step)].numpy()
                yield cut, s if chain else scaled_loglikes(s, trained.log_prior, acwt, prior_scale)


def compute_loglikes(
    cuts_path: Path,
    exp_dir: Path,
    out_ark: Path,
    acwt: float = 1.0,
    prior_scale: float = 1.0,
    max_duration: float = 120.0,
    device: torch.device | str | None = None,
    nj: int = 1,
    engine: JobsConfig | None = None,
    resume_key: str | None = None,
) -> int:
    """Every cut's scaled log-likelihoods (:func:`iter_loglikes`) into a Kaldi float-matrix table ``out_ark``
    (+ .scp) as ``nj`` jobs on ``engine`` (asrhybrid.jobs): job ``n`` writes ``<out_ark>.split<nj>/n.ark``, the
    tables joined in job order when all have finished (kept for a re-run under the same ``resume_key``);
    returns the count."""
    out_ark = Path(out_ark)
    device = str(torch.device(device) if device is not None else default_device())
    engine = engine or JobsConfig()
    split = out_ark.parent / f"{out_ark.name}.split{nj}"
    resume_or_clear(split, resume_key)
    shared = {"cuts_path": Path(cuts_path), "exp_dir": Path(exp_dir), "acwt": acwt, "prior_scale": prior_scale}
    jobs = split_jobs(
        "loglikes",
        loglikes_job,
        nj,
        {**shared, "max_duration": max_duration, "device": device},
        lambda j: {"out_ark": split / f"{j}.ark"},
    )
    todo = unfinished(jobs, lambda j: split / f"{j}.count", str(out_ark))
    run_jobs(todo, engine.on_device(device), out_ark.parent / "log" / out_ark.stem, desc=f"loglikes {out_ark.name}")
    merge_tables([split / f"{j}.ark" for j in range(1, nj + 1)], out_ark)
    count = sum(int((split / f"{j}.count").read_text()) for j in range(1, nj + 1))
    shutil.rmtree(split)
    return count


def loglikes_job(
    cuts_path: Path,
    exp_dir: Path,
    out_ark: Path,
    acwt: float,
    prior_scale: float,
    max_duration: float,
    device: str,
    job: int,
    nj: int,
) -> int:
    """Job ``job`` of ``nj`` of :func:`compute_loglikes`: its cuts into ``out_ark``, then its count beside it."""
    with intra_op_threads(1 if device == "cpu" and nj > 1 else None):
        model, trained = load_am(exp_dir, device)
        cuts = load_cuts(cuts_path)
        normalizer = trained.normalizer(cuts, cuts_path)  # the speakers' statistics span every job's cuts
        done = 0
        with matrix_table_writer(out_ark) as write:
            mine = cuts.filter(InJob(job, nj))
            for cut, loglikes in iter_loglikes(
                model, trained, mine, acwt, prior_scale, max_duration, device, normalizer
            ):
                write(cut.id, loglikes)
                done += 1
    write_text_atomic(out_ark.with_suffix(".count"), f"{done}\n")
    return done
