"""LF-MMI training of a chain model through stage 6's trainer (asrhybrid.nnet.trainer.Objective).

Per batch of utterances or chunks, the loss to minimise is Kaldi chain's (chain-training.cc), summed over frames:

    -(numerator - denominator)  +  xent_regularize x cross-entropy  +  output_l2 / 2 x sum(chain output^2)

- numerator: each sequence's supervision (asrhybrid.chain.supervision: the transcript's training graph for a
  whole utterance, the alignment's phones for a chunk; frames limited to the pdfs the alignment puts within
  ``tolerance``; composed with the denominator's normalisation FST, so at most the denominator) through the
  FSA engine (k2's intersect_dense, double-precision totals);
- denominator: the denominator graph with the leaky HMM (asrhybrid.fsa.denominator), from Kaldi's initial
  probabilities; a chunk may end in any state (Kaldi's: it is cut from the middle of an utterance), a whole
  utterance where the graph may end (``all_final``: anywhere, as Kaldi's);
- cross-entropy regularisation: the network's second output (asrhybrid.nnet.models.ChainAM) against the
  numerator's occupation posteriors as soft targets, as Kaldi's xent output;
- the output penalty: Kaldi's --l2-regularize on the chain output, which keeps it from drifting (LF-MMI is
  invariant to a constant added to a frame's outputs).

The reported objective is (numerator - denominator) per frame, what Kaldi logs as log-prob-per-frame.

With frame subsampling N the network runs at the input's rate and its outputs at input frames N t are used
(Kaldi's chain models compute only those); training chunks (``chunk_frames``, in input frames, with
``chunk_left_context`` before them, as the cross-entropy LSTMP's) keep the targets that fall inside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import torch
from torch import nn

from asrhybrid.chain.den_graph import DenominatorGraph
from asrhybrid.chain.supervision import OUTSIDE_TOLERANCE, SupervisionMaker
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.fsa import DenseFsaVec
from asrhybrid.fsa.denominator import DenominatorTopology
from asrhybrid.fsa.k2_engine import available as k2_available
from asrhybrid.kaldi_tables import AlignmentTable
from asrhybrid.nnet.batches import IGNORE
from asrhybrid.nnet.lfmmi import lfmmi_objective
from asrhybrid.nnet.train import FrameObjective

log = logging.getLogger(__name__)


@dataclass
class ChainConfig:
    """A chain system's LF-MMI options (stage 6's ``chain:``), Kaldi's defaults."""

    leaky_hmm_coefficient: float = 0.1
    xent_regularize: float = 0.1
    output_l2: float = 5e-5  # Kaldi's --chain.l2-regularize
    tolerance: int = 5  # input frames either side of a phone's aligned span (Kaldi's left/right tolerance)
    frame_subsampling_factor: int = 1  # the network's outputs used: every N-th frame (set from the tree dir)
    ngram_order: int = 4  # the denominator's phone LM (asrhybrid.chain.phone_lm)
    no_prune_ngram_order: int = 3
    num_extra_states: int = 2000
    frame_shift: bool = False  # training outputs read at input frames N t + k, k drawn per utterance (Kaldi's)
    all_final: bool = False  # a whole utterance may end in any state (Kaldi's); a chunk always may
    normalize_numerator: bool = True  # numerators composed with the denominator's normalisation FST (Kaldi's)

    @property
    def output_tolerance(self) -> int:
        """The tolerance in output frames (Kaldi's is in input frames)."""
        return -(-self.tolerance // self.frame_subsampling_factor)

    @classmethod
    def from_dict(cls, options: dict) -> "ChainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"chain: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cfg = cls(**options)
        if cfg.leaky_hmm_coefficient < 0 or cfg.xent_regularize < 0 or cfg.output_l2 < 0 or cfg.tolerance < 0:
            raise ConfigError("chain: leaky_hmm_coefficient, xent_regularize, output_l2 and tolerance must be >= 0")
        if cfg.frame_subsampling_factor < 1:
            raise ConfigError(f"chain: frame_subsampling_factor {cfg.frame_subsampling_factor} < 1")
        return cfg


class ChainObjective(FrameObjective):
    """LF-MMI (asrhybrid.nnet.trainer.Objective) on whole utterances or chunks, batched as frame
    cross-entropy's; ``count`` is output frames."""

    loss_name, metric_name, count_name = "chain", "xent", "frames"
    stat_names = ("objf", "xent")

    def __init__(
        self,
        train_cfg,
        targets: AlignmentTable,
        normalizer,
        right_context: int,
        perturbation,
        chain: ChainConfig,
        den: DenominatorGraph,
        supervision: SupervisionMaker,
    ):
        super().__init__(train_cfg, targets, normalizer, right_context, perturbation)
        self.chain, self.den, self.supervision = chain, den, supervision
        self.engine = "k2" if k2_available() else "torch"
        self._topology: dict[tuple[str, bool], DenominatorTopology] = {}

    def topology(self, device: torch.device, chunks: bool) -> DenominatorTopology:
        """The denominator of chunks or of whole utterances, ending where their numerators may
        (SupervisionMaker.ends_anywhere)."""
        all_final = self.supervision.ends_anywhere(chunks)
        key = (str(device), all_final)
        if key not in self._topology:
            self._topology[key] = DenominatorTopology.from_graph(
                self.den.fsa, self.den.initial, torch.float32, device, all_final=all_final
            )
        return self._topology[key]

    def batches(self, cuts, generator, rank: int, world: int, epoch: int = 0):
        step, chunked = self.chain.frame_subsampling_factor, bool(self.cfg.chunk_frames and generator is not None)
        batches = self.sequences(
            cuts, generator, rank, world, with_cuts=True, subsampling=step, frame_shift=self.chain.frame_shift
        )
        for x, y, rows in batches:
            if x is None:
                yield None
                continue
            supervision, keep = [], []
            for b, ((cut, first), targets) in enumerate(zip(rows, y)):
                frames = int((targets != IGNORE).sum())
                sup = self.supervision.chunk(cut, first, frames) if chunked else self.supervision.whole(cut, frames)
                if sup is None:  # Kaldi drops such an example
                    log.warning(
                        "%s (frames from %d): no numerator path the denominator allows; left out", cut.id, first
                    )
                    continue
                supervision.append(sup)
                keep.append(b)
            if not keep:
                yield None
                continue
            if len(keep) < len(rows):
                x, y = x[keep], y[keep]
            yield x, y, (supervision, chunked)

    def forward(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        x, y, (supervision, chunks) = batch
        output, xent_logits = model.forward_with_xent(x.to(device))
        index, lengths = _target_positions(y)  # the outputs with targets: every N-th frame inside the chunk
        index = index.to(device)[:, :, None].expand(-1, -1, output.shape[-1])
        output, xent_logits = output.float().gather(1, index), xent_logits.float().gather(1, index)
        valid = (torch.arange(output.shape[1])[None, :] < lengths[:, None]).to(device)  # [B, T]
        if not model.training:  # held-out batches run without a graph; the numerator's posteriors need one
            output = output.detach().requires_grad_()
        with torch.enable_grad():
            result = lfmmi_objective(
                _numerator_dense(supervision, output, lengths, self.den.label_to_column),
                [sup.graph for sup in supervision],
                self.topology(device, chunks),
                self.chain.leaky_hmm_coefficient,
                engine=self.engine,
                den_dense=DenseFsaVec(output, lengths.to(device), self.den.label_to_column),
            )
            objf = result.objective.sum()
            if not torch.isfinite(objf):  # Kaldi zeroes such a minibatch's derivative and goes on; so does this
                bad = [sup.utt for sup, o in zip(supervision, result.objective) if not torch.isfinite(o)]
                log.warning("LF-MMI objective %s: batch skipped (impossible numerator of %s)", float(objf), bad)
                return output.sum() * 0.0, {"count": 0.0, "objf": 0.0, "xent": 0.0}
            loss = -objf
            xent = torch.zeros((), device=device)
            if self.chain.xent_regularize > 0 or not model.training:
                # Kaldi's xent targets: the numerator's occupation posteriors, its gradient on the outputs
                (posteriors,) = torch.autograd.grad(result.numerator.sum(), output, retain_graph=model.training)
                xent = -(posteriors.detach() * torch.log_softmax(xent_logits, dim=-1)).sum()
                loss = loss + self.chain.xent_regularize * xent
        if self.chain.output_l2 > 0:
            loss = loss + 0.5 * self.chain.output_l2 * (output.pow(2) * valid[:, :, None]).sum()
        return loss, {"count": float(lengths.sum()), "objf": float(objf.detach()), "xent": float(xent.detach())}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"chain": sums["objf"] / sums["count"], "xent": sums["xent"] / sums["count"]}


def _target_positions(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, T'] the frames of each row that have a target, padded with the last; [B] their counts)."""
    positions = [torch.nonzero(row != IGNORE).squeeze(1) for row in y]
    lengths = torch.tensor([len(p) for p in positions])
    if int(lengths.min()) == 0:
        raise DataError(["a training sequence without targets"])
    width = int(lengths.max())
    return torch.stack([torch.cat([p, p[-1:].expand(width - len(p))]) for p in positions]), lengths


def _numerator_dense(supervision, output: torch.Tensor, lengths: torch.Tensor, columns) -> DenseFsaVec:
    """The outputs as the numerators read them: each frame limited to the pdfs its alignment allows."""
    penalty = torch.zeros_like(output, requires_grad=False)
    for b, sup in enumerate(supervision):
        penalty[b, : sup.allowed.shape[0]] = torch.where(sup.allowed.to(output.device), 0.0, OUTSIDE_TOLERANCE)
    return DenseFsaVec(output + penalty, lengths, columns)
