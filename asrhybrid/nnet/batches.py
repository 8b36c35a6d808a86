"""Batches of a hybrid acoustic model's training: a Lhotse sampler over the cuts (by total duration), features
read per batch, targets by key from an alignment table, chunks with context, padding (the last frame repeated;
its targets ignored), and the validation share chosen by a hash of the utterance id."""

from __future__ import annotations

import zlib
from functools import partial

import torch
from lhotse.dataset import SimpleCutSampler

from asrhybrid.features.cmvn import FeatureNormalizer
from asrhybrid.kaldi_tables import AlignmentTable
from asrhybrid.nnet.augment import Augmentation, WaveformPerturbation, training_features, utterance_generator

IGNORE = -100  # targets of padding and context frames


def held_out(utt: str, fraction: float) -> bool:
    """Whether an utterance is in the validation share (a hash of its id: stable, no list kept)."""
    return zlib.crc32(utt.encode("utf-8")) % 10_000 < fraction * 10_000


class HeldOut:
    """``cuts.filter(HeldOut(fraction, keep=True))``: the validation share (``keep=False``: the rest), a picklable
    predicate (Lhotse warns on lambdas)."""

    def __init__(self, fraction: float, keep: bool):
        self.fraction, self.keep = fraction, keep

    def __call__(self, cut) -> bool:
        return held_out(cut.id, self.fraction) == self.keep


def _cut_aligned(cut, targets: AlignmentTable) -> bool:
    return cut.id in targets


def chunk_spans(num_frames: int, chunk: int, left: int, right: int) -> list[tuple[int, int, int, int]]:
    """(input start, target start, target end, input end) per chunk of an utterance; one span when chunk <= 0."""
    if chunk <= 0:
        return [(0, 0, num_frames, num_frames)]
    return [
        (max(0, s - left), s, min(s + chunk, num_frames), min(num_frames, s + chunk + right))
        for s in range(0, num_frames, chunk)
    ]


def _spread(targets: torch.Tensor, num_frames: int, step: int, shift: int = 0) -> torch.Tensor:
    """Targets at 1/``step`` of the frame rate placed at input frames shift, shift + step, shift + 2 step, ...
    (IGNORE between)."""
    out = torch.full((num_frames,), IGNORE, dtype=torch.int64)
    positions = torch.arange(shift, num_frames, step)[: len(targets)]
    out[positions] = targets[: len(positions)]
    return out


def _draw_shift(batch_seed: int, utt: str, step: int) -> int:
    return int(torch.randint(step, (1,), generator=utterance_generator(batch_seed + 1, utt)))


def pad_batch(feats: list[torch.Tensor]) -> torch.Tensor:
    """[B, T_max, D], each sequence padded by repeating its last frame."""
    T = max(f.shape[0] for f in feats)
    return torch.stack([torch.cat([f, f[-1:].expand(T - f.shape[0], -1)]) for f in feats])


def pad_targets(ys: list[torch.Tensor]) -> torch.Tensor:
    """[B, T] targets of a batch, padded with IGNORE."""
    T = max(len(y) for y in ys)
    return torch.stack([torch.cat([y, y.new_full((T - len(y),), IGNORE)]) for y in ys])


def sampler(cuts, max_duration: float, generator: torch.Generator | None):
    seed = int(torch.randint(1 << 30, (1,), generator=generator)) if generator is not None else 0
    # world_size=1: every worker draws the same global batches and shards them itself (see the module's doc)
    return SimpleCutSampler(
        cuts, max_duration=max_duration, shuffle=generator is not None, seed=seed, world_size=1, rank=0
    )


def frame_batches(
    cuts,
    targets: AlignmentTable,
    normalizer: FeatureNormalizer,
    max_duration: float,
    generator: torch.Generator | None,
    chunk: int = 0,
    left: int = 0,
    right: int = 0,
    rank: int = 0,
    world: int = 1,
    augmentation: Augmentation | None = None,
    perturbation: WaveformPerturbation | None = None,
    with_cuts: bool = False,
    subsampling: int = 1,
    frame_shift: bool = False,
):
    """(features [B, T, D], targets [B, T] with IGNORE outside the chunks' targets[, the cut of each row with
    ``with_cuts``]) of this worker's share of
    each global batch of the aligned ``cuts``; (None, None) when its share of a batch is empty. With a
    ``perturbation`` (training: noise added to the waveform, features computed again) and an active
    ``augmentation``, each utterance is warped before and masked after the normalisation, with draws
    from its own generator, seeded by the batch's draw from ``generator`` and the utterance's id (every worker
    draws the batch's seed, so the generators stay in step whatever each one's share). With ``subsampling``
    N > 1 (a chain model's targets at 1/N of the frame rate) target t sits at input frame N t and the frames
    between have none; with ``frame_shift`` too (training), at input frame N t + k, k drawn per utterance from
    0 .. N - 1 (Kaldi's frame-shift augmentation of chain examples: the network learns every phase of its input
    against the same targets). ``with_cuts``: each row's (cut, index of its first target) too."""
    augmentation = augmentation if augmentation is not None and augmentation.active and generator is not None else None
    perturbation = perturbation if generator is not None else None
    shifting = frame_shift and subsampling > 1 and generator is not None
    for batch in sampler(cuts.filter(partial(_cut_aligned, targets=targets)), max_duration, generator):
        batch_seed = (
            int(torch.randint(1 << 30, (1,), generator=generator))
            if augmentation is not None or perturbation is not None or shifting
            else 0
        )
        xs, ys, rows = [], [], []
        for cut in list(batch)[rank::world]:
            f = training_features(cut, normalizer, batch_seed, augmentation, perturbation)
            ali = torch.as_tensor(targets[cut.id])  # read once
            # the shift's own draws (salted apart from the augmentation's), in step across workers
            shift = _draw_shift(batch_seed, cut.id, subsampling) if shifting else 0
            ali = _spread(ali, f.shape[0], subsampling, shift) if subsampling > 1 else ali[: f.shape[0]]
            for a, s, e, b in chunk_spans(len(ali), chunk, left, right):
                y = torch.full((b - a,), IGNORE, dtype=torch.int64)
                y[s - a : e - a] = ali[s:e]
                if bool((y == IGNORE).all()):  # a shifted utterance's last few frames: no target left in them
                    continue
                xs.append(f[a:b])
                ys.append(y)
                rows.append((cut, max(0, -(-(s - shift) // subsampling))))
        if not xs:
            yield (None, None, None) if with_cuts else (None, None)
            continue
        yield (pad_batch(xs), pad_targets(ys), rows) if with_cuts else (pad_batch(xs), pad_targets(ys))
