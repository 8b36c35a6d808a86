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

from asrhybrid.kaldi_io import read_matrices, write_matrices


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


def normalized_features(cut, mean: np.ndarray, std: np.ndarray, per_utterance: bool = False):
    """A cut's features with global CMVN applied, as the float32 torch tensor [T, D] the networks read.

    ``per_utterance``: the utterance's own mean is subtracted instead of the global one (Kaldi's per-utterance
    apply-cmvn without variance normalisation: a speaker's or channel's offset goes), the global std kept."""
    import torch

    return torch.from_numpy(normalize(cut.load_features(), mean, std, per_utterance))


def normalize(feats: np.ndarray, mean: np.ndarray, std: np.ndarray, per_utterance: bool = False) -> np.ndarray:
    """:func:`normalized_features` of a feature matrix (float32)."""
    center = feats.mean(axis=0) if per_utterance and len(feats) else mean
    return ((feats - center) / std).astype(np.float32)
