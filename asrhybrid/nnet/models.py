"""The hybrid acoustic models by system name: the DNN baseline (spliced frames into an MLP), the LSTMP
(asrhybrid.nnet.lstmp), Fast/Slow (asrhybrid.nnet.fast_slow)."""

from __future__ import annotations

import torch
from torch import nn

from asrhybrid.errors import ConfigError
from asrhybrid.nnet.fast_slow import FastSlowAM, SlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.options import SYSTEMS


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
