"""Batches of the end-to-end systems: normalised features with their lengths and the transcripts' token ids.

Speed perturbation (Ko 2015, Kaldi's and icefall's 0.9/1.1): with ``WaveformPerturbation``, each training
utterance is played at a speed drawn per epoch (1.0 among them): its audio resampled by 1/speed and its
fbank computed again with stage 1's options (the transcript is unchanged, which is all an end-to-end loss
needs; the hybrid systems' frame alignments would not survive it). Noise augmentation (``noise_snr``) adds
white noise to half the utterances at an SNR drawn per utterance: a system trained on one recording's
background meets test files whose background is louder (yesno has 3).

Utterances that cannot be trained on are counted and logged by reason, never a crash or a NaN loss (an
infinite CTC or RNN-T loss would make one): an empty transcript, characters outside the token set, or, for
the system's loss, fewer output frames than its label sequence needs (CTC: one frame per token and one more
between repeated tokens). An auxiliary CTC head (the joint LAS's, the RNN-T's) does not leave an utterance
out: one too short for it is counted and warned about, since its CTC term is zero there and joint decoding
cannot spell its transcript. Batches come from a Lhotse sampler by duration, features read per batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterator

import torch
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler

from asrhybrid.e2e.tokens import TokenSet
from asrhybrid.features.cmvn import FeatureNormalizer
from asrhybrid.nnet.augment import Augmentation, WaveformPerturbation, training_features
from asrhybrid.nnet.batches import pad_batch

log = logging.getLogger(__name__)


def transcript(cut) -> str:
    return " ".join(s.text or "" for s in cut.supervisions).strip()


def ctc_frames_needed(ids: list[int]) -> int:
    """The fewest frames a CTC alignment of ``ids`` takes: one per token, one blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


@dataclass
class TrainingCheck:
    """Why an utterance is left out of training, or None: ``frames_needed(ids)`` against the model's output
    frames ``output_frames(num_frames)``."""

    tokens: TokenSet
    output_frames: Callable[[int], int]
    frames_needed: Callable[[list[int]], int] = ctc_frames_needed
    head_frames_needed: Callable[[list[int]], int] | None = None  # an auxiliary CTC head's: counted, kept
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    too_short_for_head: int = 0
    head_example: str = ""

    def reason(self, cut) -> str | None:
        return self._check(cut)[0]

    def _check(self, cut) -> tuple[str | None, list[int]]:
        """(why the utterance is left out or None, its token ids: empty when it has none)."""
        text = transcript(cut)
        if not text:
            return "empty transcript", []
        unknown = self.tokens.unknown_characters(text)
        if unknown:
            return f"characters outside the token set: {''.join(sorted(unknown))}", []
        ids = self.tokens.encode(text)
        short = self._short(cut, ids, self.frames_needed)
        return (f"shorter than its labels ({short})" if short else None), ids

    def _short(self, cut, ids: list[int], frames_needed: Callable[[list[int]], int]) -> str | None:
        needed, available = frames_needed(ids), self.output_frames(cut.num_frames)
        return f"{available} output frames, {needed} needed" if needed > available else None

    def survey(self, cuts) -> int:
        """Count the bad utterances of ``cuts`` by reason (one pass over the manifest, no features read) and
        log them; returns how many are kept."""
        kept = 0
        for cut in cuts:
            why, ids = self._check(cut)
            if why is None:
                kept += 1
                short = self._short(cut, ids, self.head_frames_needed) if self.head_frames_needed else None
                if short:
                    self.too_short_for_head += 1
                    self.head_example = self.head_example or f"{cut.id}: {short}"
                continue
            kind = why.split(":")[0].split(" (")[0]
            self.counts[kind] += 1
            self.examples.setdefault(kind, f"{cut.id}: {why}")
        for kind, n in self.counts.items():
            log.warning("%d utterance(s) left out of training: %s (e.g. %s)", n, kind, self.examples[kind])
        if self.too_short_for_head:
            log.warning(
                "%d of %d utterance(s) have fewer output frames than the CTC head needs (e.g. %s): its loss is 0 "
                "on them and a search weighting it cannot spell their transcripts; a lower frame-rate reduction "
                "(a LAS's stack or pyramid) gives the head its frames",
                self.too_short_for_head,
                kept,
                self.head_example,
            )
        return kept

    def keep(self, cut) -> bool:
        return self.reason(cut) is None


def _keep(cut, check: TrainingCheck) -> bool:  # a named function: Lhotse warns on lambdas
    return check.keep(cut)


@dataclass
class E2EBatch:
    ids: list[str]
    feats: torch.Tensor  # [B, T, D], padded with the last frame
    feat_lens: torch.Tensor  # [B]
    labels: list[list[int]]  # token ids per utterance
    texts: list[str]
    durations: list[float] = field(default_factory=list)  # seconds of audio per utterance


def e2e_batches(
    cuts,
    tokens: TokenSet,
    normalizer: FeatureNormalizer,
    max_duration: float,
    generator: torch.Generator | None,
    check: TrainingCheck | None = None,
    rank: int = 0,
    world: int = 1,
    augmentation: Augmentation | None = None,
    perturbation: WaveformPerturbation | None = None,
    num_buckets: int = 10,
    by_duration: bool = False,
) -> Iterator[E2EBatch | None]:
    """This worker's share of each global batch (None when empty). With ``generator`` (training): Lhotse's
    dynamic bucketing by duration (``num_buckets``), shuffled, and augmented as in stage 6 (a generator per
    utterance seeded from the batch's draw), or with ``by_duration`` (SortaGrad's first epoch) the batches in
    order of duration, shortest first (the cuts sorted in memory: their metadata, not their features);
    without ``generator``, the cuts in order."""

    if check is not None:
        cuts = cuts.filter(partial(_keep, check=check))
    if generator is not None and by_duration:
        sampler = SimpleCutSampler(
            cuts.to_eager().sort_by_duration(ascending=True),
            max_duration=max_duration,
            shuffle=False,
            world_size=1,
            rank=0,
        )
    elif generator is not None:  # training: batches of similar durations (Deep Speech's), buckets shuffled
        seed = int(torch.randint(1 << 30, (1,), generator=generator))
        sampler = DynamicBucketingSampler(
            cuts, max_duration=max_duration, shuffle=True, seed=seed, num_buckets=num_buckets, world_size=1, rank=0
        )
    else:
        sampler = SimpleCutSampler(cuts, max_duration=max_duration, shuffle=False, world_size=1, rank=0)
    augmentation = augmentation if augmentation is not None and augmentation.active and generator is not None else None
    perturbation = perturbation if generator is not None else None
    for batch in sampler:
        batch_seed = (
            int(torch.randint(1 << 30, (1,), generator=generator))
            if augmentation is not None or perturbation is not None
            else 0
        )
        mine = list(batch)[rank::world]
        if not mine:
            yield None
            continue
        feats = [training_features(cut, normalizer, batch_seed, augmentation, perturbation) for cut in mine]
        lens = torch.tensor([f.shape[0] for f in feats])
        padded = pad_batch(feats)
        texts = [transcript(c) for c in mine]
        yield E2EBatch(
            [c.id for c in mine],
            padded,
            lens,
            [tokens.encode(t) for t in texts],
            texts,
            [float(c.duration) for c in mine],
        )
