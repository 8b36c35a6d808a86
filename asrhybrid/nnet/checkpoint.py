"""A trained system as its directory keeps it (``final.pt``): what train-am, train-e2e and adapt-am write and every
loader reads, hybrid, speaker-adapted and end-to-end alike.

A TrainedSystem is the network's weights with what it needs around them: the config it was trained with, how its
input is normalised (the training data's feature mean and deviation, and the config's ``cmvn`` mode), the width of
its output (senones or tokens), the log state priors of a hybrid model and the per-speaker transforms of an
adapted one. An end-to-end system's token model sits beside ``final.pt`` in ``tokens/``. Building the network from
it is its trainer's job (asrhybrid.nnet.inference.load_am, asrhybrid.e2e.train.load_e2e): this module only knows
the checkpoint.

The file is the dict torch.save wrote before this module existed (keys model, config, feat_mean, feat_std, and
num_pdfs + log_prior or num_tokens, and adaptation), so every system trained since reads back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from asrhybrid.errors import DataError
from asrhybrid.features.cmvn import FeatureNormalizer
from asrhybrid.outputs import atomic_output

FINAL = "final.pt"
AM, E2E = "am", "e2e"  # a hybrid acoustic model over senones; a stage-9 system over tokens
_KIND_NAMES = {AM: "a hybrid acoustic model", E2E: "an end-to-end system"}


@dataclass(frozen=True)
class TrainedSystem:
    kind: str  # AM or E2E
    config: dict  # the TrainConfig / E2EConfig it was trained with, as a dict
    weights: dict  # the network's state dict, on the CPU
    feat_mean: np.ndarray
    feat_std: np.ndarray
    num_outputs: int  # senones (pdfs) of an AM, tokens of an E2E system
    log_prior: np.ndarray | None = None  # an AM's log state priors (asrhybrid.nnet.priors)
    adaptation: dict | None = None  # adapt-am's per-speaker transforms, with "base" and "first_pass"

    @property
    def system(self) -> str:
        """dnn, lstmp, fast_slow, ..., ctc, las, rnnt."""
        return self.config["system"]

    @property
    def feat_dim(self) -> int:
        return int(self.feat_mean.shape[0])

    def normalizer(self, cuts=None, cuts_path: Path | str | None = None) -> FeatureNormalizer:
        """How the system's input is normalised (the config's ``cmvn``) for ``cuts`` (the whole set, for the
        speakers' statistics; see FeatureNormalizer.for_cuts) or, with none, for single files (transcribe)."""
        mode = self.config.get("cmvn", "global")
        if cuts is None:
            return FeatureNormalizer(mode, self.feat_mean, self.feat_std)
        return FeatureNormalizer.for_cuts(mode, self.feat_mean, self.feat_std, cuts, cuts_path)

    def adapted(self, adaptation: dict) -> TrainedSystem:
        return replace(self, adaptation=adaptation)

    def base(self) -> TrainedSystem:
        """The system without its speakers' transforms."""
        return replace(self, adaptation=None)

    def save(self, exp_dir: Path | str) -> Path:
        """Write ``exp_dir/final.pt`` (atomically: a killed writer leaves the old one or none)."""
        saved = {"model": self.weights, "config": self.config, "feat_mean": self.feat_mean, "feat_std": self.feat_std}
        if self.kind == AM:
            saved.update(num_pdfs=self.num_outputs, log_prior=self.log_prior)
        else:
            saved["num_tokens"] = self.num_outputs
        if self.adaptation is not None:
            saved["adaptation"] = self.adaptation
        path = Path(exp_dir) / FINAL
        with atomic_output(path) as tmp:
            torch.save(saved, tmp)
        return path

    @classmethod
    def load(cls, exp_dir: Path | str, kind: str | None = None) -> TrainedSystem:
        """The system in ``exp_dir`` (its final.pt); a clear error when there is none, or when it is not of
        ``kind`` (AM or E2E) where one is asked for."""
        path = Path(exp_dir) / FINAL
        if not path.is_file():
            raise DataError([f"{path} not found: {exp_dir} is not a trained system (train-am, train-e2e, adapt-am)"])
        saved = torch.load(path, weights_only=False, map_location="cpu")
        if not isinstance(saved, dict) or "model" not in saved or not ({"num_pdfs", "num_tokens"} & saved.keys()):
            raise DataError([f"{path}: not a trained system's checkpoint (no model weights and output width)"])
        found = E2E if "num_tokens" in saved else AM
        if kind is not None and kind != found:
            raise DataError([f"{exp_dir}: {_KIND_NAMES[found]} ({saved['config']['system']}), not {_KIND_NAMES[kind]}"])
        e2e = found == E2E
        return cls(
            kind=found,
            config=saved["config"],
            weights=saved["model"],
            feat_mean=saved["feat_mean"],
            feat_std=saved["feat_std"],
            num_outputs=int(saved["num_tokens"] if e2e else saved["num_pdfs"]),
            log_prior=saved.get("log_prior"),
            adaptation=saved.get("adaptation") or None,
        )


def is_trained_system(path: Path | str) -> bool:
    """Whether ``path`` is a directory with a final.pt."""
    return (Path(path) / FINAL).is_file()


def cpu_weights(model: torch.nn.Module) -> dict:
    return {k: v.cpu() for k, v in model.state_dict().items()}
