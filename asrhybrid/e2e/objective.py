"""What the end-to-end systems share as training objectives (asrhybrid.nnet.trainer.Objective): batches from
asrhybrid.e2e.data, a summed loss, and on held-out batches the token error rate of greedy decoding."""

from __future__ import annotations

import kaldialign
import torch
from torch import nn


class TokenObjective:
    """A subclass gives ``loss_name``, ``count_name``, :meth:`loss` and :meth:`greedy`."""

    metric_name = "token_error_rate"
    loss_name = count_name = ""

    def __init__(self, name: str, batches, parts: tuple[str, ...] = ()):
        self.name, self._batches = name, batches  # batches(cuts, generator, rank, world, epoch)
        self.loss_parts = tuple(parts)  # the model's loss terms apart (e.g. att and ctc of a joint LAS), unweighted

    @property
    def stat_names(self) -> tuple[str, ...]:
        return (self.loss_name, *self.loss_parts, "token_errors", "ref_tokens")

    def batches(self, cuts, generator, rank, world, epoch: int = 0):
        return self._batches(cuts, generator, rank, world, epoch)

    def loss(self, model: nn.Module, feats: torch.Tensor, lens: torch.Tensor, labels: list[list[int]]):
        """(summed loss, count, what :meth:`greedy` reads, {part: its summed loss} for ``loss_parts``)."""
        raise NotImplementedError

    def greedy(self, model: nn.Module, outputs) -> list[list[int]]:
        """Greedy token sequences of a batch, from :meth:`loss`'s third value."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        loss, count, outputs, parts = self.loss(model, batch.feats.to(device), batch.feat_lens.to(device), batch.labels)
        stats = {"count": float(count), self.loss_name: float(loss.detach())}
        stats.update({name: float(parts[name].detach()) for name in self.loss_parts})
        if not model.training:
            errors = sum(
                kaldialign.edit_distance(label, hyp)["total"]
                for label, hyp in zip(batch.labels, self.greedy(model, outputs))
            )
            stats.update(token_errors=float(errors), ref_tokens=float(sum(len(y) for y in batch.labels)))
        return loss, stats

    def metrics(self, sums: dict[str, float]) -> dict[str, float | None]:
        ter = sums["token_errors"] / sums["ref_tokens"] if sums.get("ref_tokens") else None
        return {
            self.loss_name: sums[self.loss_name] / sums["count"],
            **{name: sums[name] / sums["count"] for name in self.loss_parts},
            "token_error_rate": ter,
        }
