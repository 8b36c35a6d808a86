"""A frame classifier on spliced features: the context-independent network of GMM-free flat start.

Frames t-c..t+c of normalised fbank are concatenated (Kaldi's splicing, edges
repeated) and classified into HMM states (pdfs) by a ReLU MLP.
"""

from __future__ import annotations

import torch
from torch import nn


def splice(feats: torch.Tensor, context: int) -> torch.Tensor:
    """[T, D] -> [T, (2c+1) D], the first and last frames repeated at the edges."""
    if context == 0:
        return feats
    padded = torch.cat([feats[:1].expand(context, -1), feats, feats[-1:].expand(context, -1)])
    return padded.unfold(0, 2 * context + 1, 1).transpose(1, 2).reshape(feats.shape[0], -1)


class SplicedMLP(nn.Module):
    def __init__(self, feat_dim: int, num_pdfs: int, context: int = 5, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.context = context
        dims = [feat_dim * (2 * context + 1)] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(dims[-1], num_pdfs))

    def forward(self, spliced: torch.Tensor) -> torch.Tensor:
        """Logits [N, num_pdfs] for spliced frames [N, (2c+1) D]."""
        return self.body(spliced)

    def log_posteriors(self, feats: torch.Tensor) -> torch.Tensor:
        """[T, D] features of one utterance -> [T, num_pdfs] log posteriors."""
        return torch.log_softmax(self.forward(splice(feats, self.context)), dim=-1)
