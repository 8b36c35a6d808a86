"""CMVN statistics in Kaldi's format (compute-cmvn-stats).

Kaldi keeps the statistics of D-dimensional features as a 2 x (D+1) double
matrix: row 0 holds the sums and, last, the frame count; row 1 the sums of
squares and a 0. We write them per speaker (``--spk2utt`` style) and globally
into Kaldi archives through kaldi-native-io, so Kaldi's apply-cmvn reads them too
(``apply-cmvn --utt2spk=... ark:cmvn_train.ark ...``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from asrhybrid.features.layout import FeatureSet
from asrhybrid.kaldi_tables import read_matrices, write_matrices


class CmvnStats:
    """Accumulates Kaldi CMVN statistics for one key."""

    def __init__(self, dim: int):
        self.stats = np.zeros((2, dim + 1), dtype=np.float64)

    def accumulate(self, feats: np.ndarray) -> None:
        feats = np.asarray(feats, dtype=np.float64)
        self.stats[0, :-1] += feats.sum(axis=0)
        self.stats[1, :-1] += (feats**2).sum(axis=0)
        self.stats[0, -1] += feats.shape[0]

    @property
    def count(self) -> float:
        return float(self.stats[0, -1])

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.count
        mean = self.stats[0, :-1] / n
        return mean, self.stats[1, :-1] / n - mean**2


def write_cmvn(ark: Path, stats: dict[str, CmvnStats]) -> None:
    """Kaldi's CMVN stats archive: a 2 x (D+1) matrix per key."""
    write_matrices(ark, {key: st.stats for key, st in stats.items()})


def global_mean_std(ark: Path, var_floor: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from the ``global`` entry of a CMVN archive (for feature normalisation)."""
    stats = CmvnStats(0)
    stats.stats = read_cmvn(Path(ark))["global"]
    mean, var = stats.mean_var()
    return mean, np.sqrt(np.maximum(var, var_floor))


def read_cmvn(ark: Path) -> dict[str, np.ndarray]:
    return read_matrices(ark)


CMVN_MODES = ("global", "utterance", "speaker")


def speaker_of(cut) -> str:
    """The key of a cut's statistics: its supervision's speaker, else the cut itself (stage 1's keys)."""
    speaker = cut.supervisions[0].speaker if cut.supervisions else None
    return speaker or cut.id


class FeatureNormalizer:
    """Features as the networks read them, ``(x - mean) / std`` as float32, with ``mode``:

    - ``global``: the training set's mean and std;
    - ``utterance``: the utterance's own mean and the global std (Kaldi's apply-cmvn per utterance without
      ``--norm-vars``: a channel's offset goes);
    - ``speaker``: the speaker's own mean and std (Kaldi's usual per-speaker ``apply-cmvn --norm-vars=true
      --utt2spk``), from the statistics of that speaker's utterances in the same set, test sets included, as
      Kaldi's offline recipes do. An utterance whose speaker has no statistics (a file given to transcribe) is
      its own speaker.

    Memory: two vectors per speaker, as Kaldi's cmvn.ark holds."""

    def __init__(
        self,
        mode: str,
        mean: np.ndarray,
        std: np.ndarray,
        speaker_stats: dict[str, np.ndarray] | None = None,
        var_floor: float = 1e-4,
    ):
        if mode not in CMVN_MODES:
            raise ValueError(f"cmvn '{mode}': one of {', '.join(CMVN_MODES)}")
        self.mode, self.mean, self.std, self.var_floor = mode, mean, std, var_floor
        self.speaker_stats = speaker_stats or {}

    @classmethod
    def for_cuts(cls, mode: str, mean: np.ndarray, std: np.ndarray, cuts, cuts_path: Path | str | None = None):
        """The normaliser of a set of cuts; in ``speaker`` mode with the statistics stage 1 wrote beside
        ``cuts_path`` when they cover every speaker of ``cuts``, else accumulated over ``cuts`` (one pass)."""
        if mode != "speaker":
            return cls(mode, mean, std)
        speakers = {speaker_of(cut) for cut in cuts}
        features = FeatureSet.find(cuts_path) if cuts_path is not None else None
        ark = features.speaker_cmvn if features is not None else None
        if ark is not None and ark.is_file():
            stats = read_cmvn(ark)
            if speakers <= stats.keys():
                return cls(mode, mean, std, {k: stats[k] for k in speakers})
        accumulated: dict[str, CmvnStats] = {}
        for cut in cuts:
            feats = cut.load_features()
            accumulated.setdefault(speaker_of(cut), CmvnStats(feats.shape[1])).accumulate(feats)
        return cls(mode, mean, std, {k: st.stats for k, st in accumulated.items()})

    def _mean_std(self, feats: np.ndarray, speaker: str | None) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "global" or not len(feats):
            return self.mean, self.std
        if self.mode == "utterance":
            return feats.mean(axis=0), self.std
        stats = CmvnStats(feats.shape[1])
        if speaker in self.speaker_stats:
            stats.stats = self.speaker_stats[speaker]
        else:
            stats.accumulate(feats)
        mean, var = stats.mean_var()
        return mean, np.sqrt(np.maximum(var, self.var_floor))

    def array(self, feats: np.ndarray, speaker: str | None = None) -> np.ndarray:
        """A feature matrix [T, D] of ``speaker`` (None: its own speaker) normalised, float32."""
        mean, std = self._mean_std(feats, speaker)
        return ((feats - mean) / std).astype(np.float32)

    def __call__(self, cut, feats: np.ndarray | None = None):
        """A cut's features (``feats``: given instead of loaded, e.g. augmented) as the torch tensor [T, D]."""
        return torch.from_numpy(self.array(cut.load_features() if feats is None else feats, speaker_of(cut)))


def normalized_features(cut, mean: np.ndarray, std: np.ndarray):
    """A cut's features with the global CMVN applied (the flat-start network's input), a torch tensor [T, D]."""
    return FeatureNormalizer("global", mean, std)(cut)
