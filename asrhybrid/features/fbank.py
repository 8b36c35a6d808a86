"""Kaldi-compatible log-mel filterbank, registered as a Lhotse feature extractor.

``KaldiFbank`` computes exactly what Kaldi's ``compute-fbank-feats`` computes:
kaldifeat (batched, CUDA when available) when it is installed, else
kaldi-native-fbank (the same C++ algorithm on CPU). Options carry Kaldi's names
and defaults, except ``dither`` (0 here: features are then reproducible) and
``snip_edges`` (false: Lhotse's frame counts assume it).

Kaldi reads 16-bit samples as integers in [-32768, 32767]; Lhotse gives floats
in [-1, 1]. We scale by 32768 so that the log energies equal Kaldi's (icefall
leaves them 2*ln(32768) = 20.8 lower; a model trained on one is off on the other).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import kaldi_native_fbank as knf
import numpy as np
import torch
from lhotse.features.base import FeatureExtractor, register_extractor
from lhotse.utils import Seconds

log = logging.getLogger(__name__)

KALDI_SAMPLE_SCALE = 32768.0


@functools.lru_cache(maxsize=None)
def kaldifeat_available() -> bool:
    try:
        import kaldifeat  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class KaldiFbankConfig:
    """Kaldi's compute-fbank-feats options (``--num-mel-bins`` is ``num_mel_bins``, ...)."""

    sampling_rate: int = 16000
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    dither: float = 0.0
    preemph_coeff: float = 0.97
    remove_dc_offset: bool = True
    window_type: str = "povey"
    round_to_power_of_two: bool = True
    blackman_coeff: float = 0.42
    snip_edges: bool = False
    num_mel_bins: int = 80
    low_freq: float = 20.0
    high_freq: float = 0.0
    vtln_low: float = 100.0
    vtln_high: float = -500.0
    use_energy: bool = False
    energy_floor: float = 0.0
    raw_energy: bool = True
    htk_compat: bool = False
    use_log_fbank: bool = True
    use_power: bool = True
    # "auto": kaldifeat if installed, else kaldi-native-fbank.
    backend: str = "auto"
    # "auto": CUDA when available (kaldifeat only), else CPU.
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "KaldiFbankConfig":
        return KaldiFbankConfig(**data)

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "kaldifeat" if kaldifeat_available() else "kaldi-native-fbank"
        if self.backend not in ("kaldifeat", "kaldi-native-fbank"):
            raise ValueError(f"fbank backend must be auto, kaldifeat or kaldi-native-fbank, not '{self.backend}'")
        return self.backend

    def resolved_device(self) -> str:
        if self.device == "auto":
            use_cuda = self.resolved_backend() == "kaldifeat" and torch.cuda.is_available()
            return "cuda" if use_cuda else "cpu"
        return self.device


def _fill_options(opts: Any, cfg: KaldiFbankConfig) -> Any:
    """Copy our config into a kaldifeat or kaldi-native-fbank FbankOptions (same field names)."""
    f = opts.frame_opts
    f.samp_freq = float(cfg.sampling_rate)
    f.frame_shift_ms = cfg.frame_shift_ms
    f.frame_length_ms = cfg.frame_length_ms
    f.dither = cfg.dither
    f.preemph_coeff = cfg.preemph_coeff
    f.remove_dc_offset = cfg.remove_dc_offset
    f.window_type = cfg.window_type
    f.round_to_power_of_two = cfg.round_to_power_of_two
    f.blackman_coeff = cfg.blackman_coeff
    f.snip_edges = cfg.snip_edges
    m = opts.mel_opts
    m.num_bins = cfg.num_mel_bins
    m.low_freq = cfg.low_freq
    m.high_freq = cfg.high_freq
    m.vtln_low = cfg.vtln_low
    m.vtln_high = cfg.vtln_high
    opts.use_energy = cfg.use_energy
    opts.energy_floor = cfg.energy_floor
    opts.raw_energy = cfg.raw_energy
    opts.htk_compat = cfg.htk_compat
    opts.use_log_fbank = cfg.use_log_fbank
    opts.use_power = cfg.use_power
    return opts


@register_extractor
class KaldiFbank(FeatureExtractor):
    """Kaldi's fbank through kaldifeat or kaldi-native-fbank; see the module docstring."""

    name = "kaldi-fbank"
    config_type = KaldiFbankConfig

    def __init__(self, config: KaldiFbankConfig | None = None):
        super().__init__(config=config or KaldiFbankConfig())
        self.backend = self.config.resolved_backend()
        self._device = torch.device(self.config.resolved_device())
        if self.backend == "kaldifeat":
            import kaldifeat  # optional: kaldi-native-fbank is the fallback backend

            opts = _fill_options(kaldifeat.FbankOptions(), self.config)
            opts.device = self._device
            self._kaldifeat = kaldifeat.Fbank(opts)
        else:
            if self._device.type != "cpu":
                raise ValueError("kaldi-native-fbank runs on CPU only; install kaldifeat for CUDA")

            self._knf_opts = _fill_options(knf.FbankOptions(), self.config)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def frame_shift(self) -> Seconds:
        return self.config.frame_shift_ms / 1000.0

    def feature_dim(self, sampling_rate: int) -> int:
        return self.config.num_mel_bins + int(self.config.use_energy)

    def _check_rate(self, sampling_rate: int) -> None:
        if sampling_rate != self.config.sampling_rate:
            raise ValueError(
                f"fbank configured for {self.config.sampling_rate} Hz got {sampling_rate} Hz audio "
                "(resample the recordings in the data stage)"
            )

    def compute_kaldi_scaled(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Features of waveforms already in Kaldi's integer scale; float32 on CPU."""
        if self.backend == "kaldifeat":
            with torch.inference_mode():
                feats = self._kaldifeat([w.to(self._device, torch.float32) for w in waves])
            return [f.cpu() for f in feats]

        out = []
        for w in waves:
            fbank = knf.OnlineFbank(self._knf_opts)
            fbank.accept_waveform(float(self.config.sampling_rate), w.numpy().astype(np.float32, copy=False))
            fbank.input_finished()
            n = fbank.num_frames_ready
            mat = np.empty((n, self.feature_dim(self.config.sampling_rate)), dtype=np.float32)
            for i in range(n):
                mat[i] = fbank.get_frame(i)
            out.append(torch.from_numpy(mat))
        return out

    def extract(self, samples: np.ndarray | torch.Tensor, sampling_rate: int) -> np.ndarray:
        self._check_rate(sampling_rate)
        wave = torch.as_tensor(np.asarray(samples, dtype=np.float32)).reshape(-1)
        return self.compute_kaldi_scaled([wave * KALDI_SAMPLE_SCALE])[0].numpy()

    def extract_batch(
        self,
        samples: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        sampling_rate: int,
        lengths: Sequence[int] | None = None,
    ) -> list[np.ndarray]:
        self._check_rate(sampling_rate)
        waves = [torch.as_tensor(np.asarray(s, dtype=np.float32)).reshape(-1) for s in samples]
        if lengths is not None:
            waves = [w[: int(n)] for w, n in zip(waves, lengths)]
        return [f.numpy() for f in self.compute_kaldi_scaled([w * KALDI_SAMPLE_SCALE for w in waves])]
