"""Training-time augmentation of the input, drawn per utterance.

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

And on the waveform (``WaveformPerturbation``, features computed again):
white noise at an SNR drawn per utterance (frames stay in place), and for the
end-to-end systems speed perturbation (Ko 2015), which changes the frame count.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from scipy.signal import resample_poly

from asrhybrid.features.fbank import KaldiFbank, KaldiFbankConfig


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
        return (
            self.vtlp > 0
            or (self.freq_masks > 0 and self.freq_mask_width > 0)
            or (self.time_masks > 0 and self.time_mask_width > 0)
        )

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
        for count, width, axis in (
            (self.freq_masks, self.freq_mask_width, 1),
            (self.time_masks, self.time_mask_width, 0),
        ):
            size = feats.shape[axis]
            for _ in range(count if width > 0 else 0):
                w = min(int(self._uniform(generator) * (width + 1)), size)
                start = int(self._uniform(generator) * (size - w + 1))
                feats.narrow(axis, start, w).zero_()
        return feats


class WaveformPerturbation:
    """Per utterance, a speed drawn from ``speeds`` and 1.0 alike, and with ``noise_snr`` [lo, hi] (dB), for
    half the utterances, white noise at an SNR drawn in that range (against the utterance's mean power);
    features of the perturbed audio (stage 1's fbank options), or the stored ones when neither applies. Noise
    alone keeps every frame in place, so the hybrid systems take it too; a speed other than 1.0 does not."""

    def __init__(self, speeds: list[float], fbank_config: KaldiFbankConfig, noise_snr: list[float] | None = None):
        self.speeds = [1.0, *[float(s) for s in speeds if float(s) != 1.0]]
        self.noise_snr = [float(x) for x in noise_snr] if noise_snr else None
        self.extractor = KaldiFbank(fbank_config)

    def features(self, cut, generator: torch.Generator):
        """(the cut's features, perturbed, and the speed)."""
        speed = self.speeds[int(torch.randint(len(self.speeds), (1,), generator=generator))]
        snr = None
        if self.noise_snr and float(torch.rand((), generator=generator)) < 0.5:
            lo, hi = self.noise_snr
            snr = lo + (hi - lo) * float(torch.rand((), generator=generator))
        if speed == 1.0 and snr is None:
            return cut.load_features(), speed
        audio = cut.load_audio()[0].astype(np.float64)
        if speed != 1.0:
            ratio = Fraction(speed).limit_denominator(100)  # e.g. 0.9 -> 9/10: 10/9 as many samples
            audio = resample_poly(audio, ratio.denominator, ratio.numerator)
        if snr is not None:
            power = float(np.mean(audio**2))
            noise = torch.randn(len(audio), generator=generator, dtype=torch.float64).numpy()
            audio = audio + noise * np.sqrt(power / 10 ** (snr / 10))
        return self.extractor.extract(audio.astype(np.float32), cut.sampling_rate), speed


def training_features(
    cut, normalizer, batch_seed: int, augmentation: Augmentation | None, perturbation: WaveformPerturbation | None
) -> torch.Tensor:
    """A training cut's normalised features, perturbed and augmented with draws from the utterance's own
    generator (``utterance_generator``); the stored features, normalised, when neither is given."""
    if augmentation is None and perturbation is None:
        return normalizer(cut)
    draws = utterance_generator(batch_seed, cut.id)
    raw = perturbation.features(cut, draws)[0] if perturbation is not None else None
    return augmentation.features(cut, normalizer, draws, raw) if augmentation is not None else normalizer(cut, raw)
