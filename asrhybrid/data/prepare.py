"""Stage 0: a corpus directory in, checked Lhotse manifests out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from asrhybrid.data.corpora import prepare_corpus
from asrhybrid.data.manifests import build_manifests, manifest_paths, write_manifests
from asrhybrid.errors import DataError
from asrhybrid.outputs import remove_stale_temporaries

log = logging.getLogger(__name__)


def prepare_data(
    corpus: str,
    preparer: str,
    corpus_dir: Path | str,
    manifest_dir: Path | str,
    sample_rate: int,
    options: dict[str, Any] | None = None,
    resample: bool = True,
    verify_audio: bool = True,
) -> dict[str, Path]:
    """Write ``<corpus>_{recordings,supervisions}_<part>.jsonl.gz``; returns {part: supervisions path}.

    Every part is checked before any file is written, so bad input leaves
    earlier outputs as they were.
    """
    corpus_dir, manifest_dir = Path(corpus_dir), Path(manifest_dir)
    options = options or {}
    parts = prepare_corpus(preparer, corpus_dir, options)
    problems: list[str] = []
    seen: dict[str, str] = {}
    for part, utts in parts.items():
        for utt in utts:
            if utt.id in seen and seen[utt.id] != part:
                problems.append(f"utterance '{utt.id}' is in both '{seen[utt.id]}' and '{part}'")
            seen.setdefault(utt.id, part)
    built = {}
    for part, utts in parts.items():
        if not utts:
            problems.append(f"part '{part}' has no utterances")
            continue
        try:
            built[part] = build_manifests(utts, sample_rate, resample, verify_audio, context=f"{corpus}/{part}")
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems, f"{corpus} ({corpus_dir})")

    manifest_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(manifest_dir)
    for part, (recordings, supervisions) in built.items():
        write_manifests(manifest_dir, corpus, part, recordings, supervisions)
        hours = sum(s.duration for s in supervisions) / 3600
        speakers = len({s.speaker for s in supervisions})
        log.info("data %s/%s: %d utterances, %.2f h, %d speakers", corpus, part, len(supervisions), hours, speakers)
    return {p: manifest_paths(manifest_dir, corpus, p)[1] for p in built}


def manifest_parts(manifest_dir: Path, corpus: str) -> list[str]:
    """Parts with supervisions in ``manifest_dir``, sorted."""
    prefix, suffix = f"{corpus}_supervisions_", ".jsonl.gz"
    return sorted(p.name[len(prefix) : -len(suffix)] for p in Path(manifest_dir).glob(f"{prefix}*{suffix}"))
