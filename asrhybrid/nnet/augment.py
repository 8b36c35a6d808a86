"""Training-time augmentation of log-mel filterbank features that keeps every frame in place.

Stage 6 trains on frame alignments, so an augmentation that changed the
frame count (speed perturbation) would need the utterances realigned. These
two do not:

- VTLP, vocal tract length perturbation (Jaitly & Hinton 2013): the
  frequency axis is warped by a factor drawn per utterance, as a speaker with
  a longer or shorter vocal tract would shift the formants. The paper warps
  the filterbank's centre frequencies with a piecewise-linear function that
  is ``alpha * f`` up to a boundary and then runs to the Nyquist frequency;
  here each output bin reads the unwarped log-mel energies, interpolated
  between bins, at its warped centre frequency. The centres are those of
  Kaldi's mel banks (``low_freq`` to the Nyquist frequency, evenly spaced in
  mel).
- SpecAugment's masks (Park 2019): bands of mel bins and runs of frames set
  to zero, the mean of the normalised features. Time masks are used by
  Kaldi's nnet3 hybrid recipes too (its spec-augment layer).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch


def utterance_generator(batch_seed: int, utt: str) -> torch.Generator:
    """An utterance's own draws, seeded by its batch's draw and its id: every data-parallel worker draws the
    batch's seed, so the workers' generators stay in step whatever each one's share."""
    return torch.Generator().manual_seed(batch_seed ^ zlib.crc32(utt.encode("utf-8")))


def mel(hz: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz) / 700.0)


def mel_centers(num_bins: int, sample_rate: float, low_freq: float = 20.0) -> np.ndarray:
    """The centre frequencies in mel of Kaldi's ``num_bins`` triangular filters from ``low_freq`` to Nyquist."""
    low, high = mel(low_freq), mel(sample_rate / 2)
    delta = (high - low) / (num_bins + 1)
    return low + delta * np.arange(1, num_bins + 1)


def vtlp_warp(hz: np.ndarray, alpha: float, nyquist: float, boundary: float = 0.8) -> np.ndarray:
    """Jaitly & Hinton's warp: ``alpha * f`` up to ``boundary * nyquist * min(alpha, 1) / alpha``, then the line
    that takes the rest of the band onto itself, so 0 and Nyquist stay fixed."""
    knee = boundary * nyquist * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - boundary * nyquist * min(alpha, 1.0)) / (nyquist - knee) * (nyquist - hz)
    return np.where(hz <= knee, alpha * hz, upper)


def warp_log_mel(feats: np.ndarray, alpha: float, sample_rate: float, low_freq: float = 20.0) -> np.ndarray:
    """``feats`` [T, num_bins] of log-mel energies with the frequency axis warped by ``alpha`` (VTLP)."""
    num_bins = feats.shape[1]
    centers = mel_centers(num_bins, sample_rate, low_freq)
    hz = 700.0 * np.expm1(centers / 1127.0)
    source = mel(vtlp_warp(hz, alpha, sample_rate / 2))  # where each output bin reads the unwarped spectrum
    position = np.clip(np.interp(source, centers, np.arange(num_bins)), 0, num_bins - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, num_bins - 1)
    frac = (position - lower).astype(feats.dtype)
    return feats[:, lower] * (1 - frac) + feats[:, upper] * frac


@dataclass
class Augmentation:
    """What is drawn per utterance: a VTLP factor in [1 - vtlp, 1 + vtlp] (0: none), ``freq_masks`` bands of up
    to ``freq_mask_width`` bins and ``time_masks`` runs of up to ``time_mask_width`` frames (0: none)."""

    vtlp: float = 0.0
    freq_masks: int = 0
    freq_mask_width: int = 0
    time_masks: int = 0
    time_mask_width: int = 0

    @property
    def active(self) -> bool:
        return self.vtlp > 0 or (self.freq_masks > 0 and self.freq_mask_width > 0) or (
            self.time_masks > 0 and self.time_mask_width > 0)

    def _uniform(self, generator: torch.Generator) -> float:
        return float(torch.rand((), generator=generator))

    def warp(self, feats: np.ndarray, sample_rate: float, generator: torch.Generator) -> np.ndarray:
        """The log-mel ``feats`` warped by a factor drawn from the generator (unchanged when ``vtlp`` is 0)."""
        if self.vtlp <= 0:
            return feats
        alpha = 1 - self.vtlp + 2 * self.vtlp * self._uniform(generator)
        return warp_log_mel(feats, alpha, sample_rate)

    def features(self, cut, normalizer, generator: torch.Generator, raw: np.ndarray | None = None) -> torch.Tensor:
        """A cut's features (``raw``: given instead of loaded) warped, normalised by ``normalizer``
        (asrhybrid.features.cmvn.FeatureNormalizer) and masked."""
        raw = cut.load_features() if raw is None else raw
        return self.mask(normalizer(cut, self.warp(raw, cut.sampling_rate, generator)), generator)

    def mask(self, feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The normalised ``feats`` [T, D] with SpecAugment's bands and runs set to zero (a copy)."""
        feats = feats.clone()
        for count, width, axis in ((self.freq_masks, self.freq_mask_width, 1),
                                   (self.time_masks, self.time_mask_width, 0)):
            size = feats.shape[axis]
            for _ in range(count if width > 0 else 0):
                w = min(int(self._uniform(generator) * (width + 1)), size)
                start = int(self._uniform(generator) * (size - w + 1))
                feats.narrow(axis, start, w).zero_()
        return feats
