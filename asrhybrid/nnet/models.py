"""The hybrid acoustic models by system name: the DNN baseline (spliced frames into an MLP), the LSTMP
(asrhybrid.nnet.lstmp), Fast/Slow (asrhybrid.nnet.fast_slow)."""

from __future__ import annotations

import torch
from torch import nn

from asrhybrid.errors import ConfigError
from asrhybrid.nnet.fast_slow import FastSlowAM, SlowAM
from asrhybrid.nnet.lstmp import LstmpAM
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.options import SYSTEMS, is_chain, network_of


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


class ChainAM(nn.Module):
    """A chain model (Kaldi's nnet3 chain recipes): the network with two outputs over the pdfs from its last
    layer, the chain output (log-likelihoods for LF-MMI and decoding, no softmax) and the cross-entropy
    regularisation output (``xent``, Povey et al. 2016 section 2.7) used only in training. Here the network's
    output layer is twice as wide and split in two. Its outputs count at every ``subsampling``-th frame."""

    def __init__(self, network: nn.Module, num_pdfs: int, subsampling: int = 1):
        super().__init__()
        self.network, self.num_pdfs, self.subsampling = network, num_pdfs, subsampling

    @property
    def right_context(self) -> int:
        return getattr(self.network, "right_context", 0)

    def forward_with_xent(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(feats)
        return out[..., : self.num_pdfs], out[..., self.num_pdfs :]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.forward_with_xent(feats)[0]


def build_model(system: str, feat_dim: int, num_pdfs: int, options: dict) -> nn.Module:
    classes = {"dnn": FrameDNN, "lstmp": LstmpAM, "fast_slow": FastSlowAM, "slow": SlowAM}
    if system not in SYSTEMS:
        raise ConfigError(f"unknown acoustic model '{system}' (systems: {', '.join(SYSTEMS)})")
    chain = is_chain(system)
    try:
        network = classes[network_of(system)](feat_dim, 2 * num_pdfs if chain else num_pdfs, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{system}: bad model option: {e}") from None
    return ChainAM(network, num_pdfs) if chain else network
