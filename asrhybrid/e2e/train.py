"""Training and loading of the end-to-end systems (stage 9), through stage 6's loop (asrhybrid.nnet.trainer).

``exp/<system>/final.pt`` holds the weights (the average of the last ``average_last`` epochs), the config
and the normalisation, ``tokens/`` a copy of the token model; ``train.json`` the history and the utterances left out (by
reason, asrhybrid.e2e.data.TrainingCheck).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asrhybrid.data.manifests import load_cuts
from asrhybrid.e2e.ctc import CtcObjective, DeepSpeech
from asrhybrid.e2e.data import TrainingCheck, ctc_frames_needed, e2e_batches
from asrhybrid.e2e.las import LAS, LasObjective
from asrhybrid.e2e.rnnt import RnntObjective, RnnTransducer
from asrhybrid.e2e.tokens import TokenSet
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import FeatureNormalizer
from asrhybrid.features.layout import FeatureSet
from asrhybrid.nnet.augment import WaveformPerturbation
from asrhybrid.nnet.batches import HeldOut
from asrhybrid.nnet.checkpoint import E2E, TrainedSystem, cpu_weights
from asrhybrid.nnet.trainer import InputOptions, Workers, default_device, fit
from asrhybrid.options import E2E_SYSTEMS
from asrhybrid.outputs import atomic_output, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class E2EConfig(InputOptions):
    """Stage 9's options: the training loop's and the input's (asrhybrid.nnet.trainer) and the system's."""

    system: str = "ctc"
    speed_perturb: list = field(default_factory=list)  # speeds besides 1.0 (Kaldi's and icefall's: [0.9, 1.1])
    sortagrad: bool = False  # Deep Speech 2's SortaGrad: the first epoch's batches in order of duration, shortest first
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        if self.system not in E2E_SYSTEMS:
            raise ConfigError(f"unknown end-to-end system '{self.system}' (systems: {', '.join(E2E_SYSTEMS)})")


def build_e2e_model(system: str, feat_dim: int, num_tokens: int, options: dict) -> nn.Module:
    classes = {"ctc": DeepSpeech, "rnnt": RnnTransducer, "las": LAS}
    try:
        return classes[system](feat_dim, num_tokens, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{system}: bad model option: {e}") from None


def _objective(system: str, batches, parts: tuple[str, ...] = ()):
    return {"ctc": CtcObjective, "rnnt": RnntObjective, "las": LasObjective}[system](system, batches, parts)


def _one_frame(ids: list[int]) -> int:
    return 1


def _no_frame(ids: list[int]) -> int:
    return 0


def train_e2e(
    cuts_path: Path,
    lang_dir: Path,
    cmvn_mean: np.ndarray,
    cmvn_std: np.ndarray,
    exp_dir: Path,
    cfg: E2EConfig,
    resume_key: str | None = None,
    device: torch.device | str | None = None,
) -> dict:
    exp_dir = Path(exp_dir)
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(cfg.seed)
    tokens = TokenSet(lang_dir)
    cuts = load_cuts(cuts_path)
    normalizer = FeatureNormalizer.for_cuts(cfg.cmvn, cmvn_mean, cmvn_std, cuts, cuts_path)
    model = build_e2e_model(cfg.system, int(cmvn_mean.shape[0]), len(tokens), cfg.model).to(device)

    # CTC needs a frame per token (and one between repeats); RNN-T emits any number of tokens a frame; LAS
    # attends to any frame from any step
    needed = {"ctc": ctc_frames_needed, "rnnt": _one_frame, "las": _no_frame}[cfg.system]
    head = ctc_frames_needed if cfg.system != "ctc" and getattr(model, "ctc", None) is not None else None
    check = TrainingCheck(tokens, model.output_frames, needed, head)
    kept = check.survey(cuts)
    train = cuts.filter(HeldOut(cfg.valid_fraction, keep=False))
    valid = cuts.filter(HeldOut(cfg.valid_fraction, keep=True))
    log.info(
        "%s: %d parameters, %d tokens (%s), %s; %d utterances usable",
        cfg.system,
        sum(p.numel() for p in model.parameters()),
        len(tokens),
        tokens.model_path.name,
        device,
        kept,
    )

    perturbation = None
    if cfg.speed_perturb or cfg.noise_snr:
        perturbation = WaveformPerturbation(
            cfg.speed_perturb, FeatureSet.of_cuts(cuts_path).fbank_config(), cfg.noise_snr
        )

    def batches(cuts, generator, rank, world, epoch=0):
        return e2e_batches(
            cuts,
            tokens,
            normalizer,
            cfg.max_duration,
            generator,
            check,
            rank,
            world,
            cfg.augmentation if generator is not None else None,
            perturbation,
            by_duration=cfg.sortagrad and epoch == 1,
        )

    objective = _objective(cfg.system, batches, getattr(model, "loss_parts", ()))  # Deep Speech has one term
    result = fit(model, objective, train, valid, exp_dir, cfg, device, resume_key)
    summary = {
        "system": cfg.system,
        "epochs": result["history"],
        "final": result["final"],
        "averaged_epochs": result["averaged_epochs"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "left_out": dict(check.counts),
        "left_out_examples": check.examples,
        "too_short_for_ctc_head": check.too_short_for_head,
        "workers": result["workers"],
        "device": result["device"],
        "kernels": result["kernels"],
    }
    if result["leader"]:
        with atomic_output(exp_dir / "tokens") as tmp:  # the token model travels with the system (replaced whole:
            tmp.mkdir()  # a retrained system's old model must not stay beside it)
            for path in (tokens.model_path, Path(lang_dir) / "tokens.txt"):
                shutil.copyfile(path, tmp / path.name)
        TrainedSystem(E2E, asdict(cfg), cpu_weights(model), cmvn_mean, cmvn_std, len(tokens)).save(exp_dir)
        write_text_atomic(exp_dir / "train.json", json.dumps(summary, indent=1) + "\n")
    Workers().barrier()
    return summary


def load_e2e(exp_dir: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainedSystem]:
    """(model in eval mode, the trained system) of an end-to-end system's directory."""
    trained = TrainedSystem.load(exp_dir, E2E)
    cfg = E2EConfig(**trained.config)
    options = dict(cfg.model)
    if cfg.system == "las" and "ctc_weight" not in options and not any(k.startswith("ctc.") for k in trained.weights):
        options["ctc_weight"] = 0.0  # trained when LAS's default was the paper's (no CTC head)
    model = build_e2e_model(cfg.system, trained.feat_dim, trained.num_outputs, options)
    model.load_state_dict(trained.weights)
    return model.to(device).eval(), trained
