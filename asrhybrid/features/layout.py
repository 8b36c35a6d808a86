"""The fbank dir's layout: where stage 1 puts one part's features and what it writes beside them. Every other
module finds a part's files through a FeatureSet instead of rewriting file names.

Per part, in the fbank dir (icefall's names)::

    <corpus>_cuts_<part>.jsonl.gz     the cuts with their features (what every later stage reads)
    <corpus>_feats_<part>/            the lilcom chunks the cuts point into
    <corpus>_cmvn_<part>.ark          per-speaker CMVN statistics (Kaldi's cmvn.ark, by speaker)
    <corpus>_cmvn_global_<part>.ark   the part's global statistics
    .done.fbank-<corpus>-<part>.json  stage 1's completion marker, with the fbank options
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from asrhybrid.errors import DataError
from asrhybrid.features.fbank import KaldiFbankConfig

_CUTS = re.compile(r"(?P<corpus>.+?)_cuts_(?P<part>.+)\.jsonl\.gz")


@dataclass(frozen=True)
class FeatureSet:
    """One part's features in ``fbank_dir``."""

    fbank_dir: Path
    corpus: str
    part: str

    @classmethod
    def of_cuts(cls, cuts: Path | str) -> FeatureSet:
        """The set a cuts manifest belongs to; an error naming it when its name is not stage 1's."""
        found = cls.find(cuts)
        if found is None:
            raise DataError([f"{cuts}: not a cuts manifest of stage 1 (<corpus>_cuts_<part>.jsonl.gz)"])
        return found

    @classmethod
    def find(cls, cuts: Path | str) -> FeatureSet | None:
        """The set a cuts manifest belongs to, or None when its name is not stage 1's (cuts made elsewhere)."""
        cuts = Path(cuts)
        match = _CUTS.fullmatch(cuts.name)
        return cls(cuts.parent, match["corpus"], match["part"]) if match else None

    @classmethod
    def in_dir(cls, fbank_dir: Path | str, part: str) -> FeatureSet:
        """The one set of ``part`` in ``fbank_dir``, whatever its corpus's name."""
        found = sorted(Path(fbank_dir).glob(f"*_cuts_{part}.jsonl.gz"))
        if len(found) != 1:
            raise DataError(
                [
                    f"{fbank_dir}: {len(found)} cuts manifests of part '{part}' (one expected): "
                    + (", ".join(p.name for p in found) or "run stage 1 (compute-fbank)")
                ]
            )
        return cls.of_cuts(found[0])

    @property
    def cuts(self) -> Path:
        return self.fbank_dir / f"{self.corpus}_cuts_{self.part}.jsonl.gz"

    @property
    def feats_dir(self) -> Path:
        return self.fbank_dir / f"{self.corpus}_feats_{self.part}"

    @property
    def speaker_cmvn(self) -> Path:
        return self.fbank_dir / f"{self.corpus}_cmvn_{self.part}.ark"

    @property
    def global_cmvn(self) -> Path:
        return self.fbank_dir / f"{self.corpus}_cmvn_global_{self.part}.ark"

    @property
    def marker_name(self) -> str:
        """Stage 1's step name for this part (its marker is .done.<name>.json)."""
        return f"fbank-{self.corpus}-{self.part}"

    def outputs(self) -> list[str]:
        """What stage 1 writes for the part, relative to the fbank dir."""
        return [p.name for p in (self.cuts, self.feats_dir, self.speaker_cmvn, self.global_cmvn)]

    def fbank_config(self) -> KaldiFbankConfig:
        """The fbank options the part was computed with (its marker's), else the training part's."""
        marker = self.fbank_dir / f".done.{self.marker_name}.json"
        if marker.is_file():
            return _config_of(marker)
        return fbank_config(self.fbank_dir)


def fbank_config(fbank_dir: Path | str) -> KaldiFbankConfig:
    """The fbank options stage 1 used for the training features of ``fbank_dir`` (from its completion marker):
    what a system trained on them expects of new audio."""
    fbank_dir = Path(fbank_dir)
    markers = sorted(fbank_dir.glob(".done.fbank-*-train.json")) or sorted(fbank_dir.glob(".done.fbank-*.json"))
    if not markers:
        raise DataError(
            [f"{fbank_dir}: no record of the fbank options (stage 1's marker); is it a recipe's data/fbank?"]
        )
    return _config_of(markers[0])


def _config_of(marker: Path) -> KaldiFbankConfig:
    return KaldiFbankConfig(**json.loads(marker.read_text())["params"]["config"])
