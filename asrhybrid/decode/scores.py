"""What a decoder searches over: per-utterance score matrices from an acoustic model, a log-likelihood archive or
(asrhybrid.e2e.decode) a CTC system.

A score source is picklable (a decode job gets it in a worker process) and names what it reads; the verb picks
one (asrhybrid.verbs.decode), the decoder only iterates it: ``source.scores(job, nj, device)`` yields
``(utt, unscaled log-likelihoods [T, C], seconds of audio or 0)`` for the utterances of job ``job`` of ``nj``.
``kind`` is ``"am"`` (HCLG over pdfs), ``"ctc"`` (HLG over tokens) or ``"archive"`` (either: the graph decides),
``num_outputs`` the width of its matrices (None: unknown before reading; the verb reads a model's from the
checkpoint it already opened); ``frame_step`` (where known) the feature frames per score row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from asrhybrid.data.manifests import load_cuts
from asrhybrid.errors import DataError
from asrhybrid.jobs import InJob, job_of
from asrhybrid.kaldi_tables import iter_matrices
from asrhybrid.nnet.inference import iter_loglikes, load_am

Scores = Iterator[tuple[str, np.ndarray, float]]


class ScoreSource(Protocol):
    path: Path
    kind: str

    num_outputs: int | None

    def scores(self, job: int, nj: int, device: str = "cpu") -> Scores: ...


@dataclass(frozen=True)
class LoglikeArchive:
    """A compute-loglikes archive (``.ark`` or its ``.scp``): log-likelihoods as they are."""

    path: Path
    kind = "archive"
    num_outputs = None

    def __post_init__(self):
        if Path(self.path).suffix not in (".ark", ".scp") or not Path(self.path).is_file():
            raise DataError(
                [f"{self.path}: neither a model directory (with final.pt) nor a log-likelihood archive (.ark)"]
            )

    def scores(self, job: int, nj: int, device: str = "cpu") -> Scores:
        for utt, ll in iter_matrices(Path(self.path).with_suffix(".ark")):
            if job_of(utt, nj) == job:
                yield utt, ll, 0.0


@dataclass(frozen=True)
class AcousticModelScores:
    """A stage-6 acoustic model's pseudo log-likelihoods (posteriors over priors^``prior_scale``) of the cuts."""

    path: Path
    cuts: Path
    num_outputs: int  # its pdfs
    prior_scale: float = 1.0
    frame_step: int = 1  # input frames per score row (a chain model's frame subsampling factor)
    kind = "am"

    def scores(self, job: int, nj: int, device: str = "cpu") -> Scores:
        model, trained = load_am(self.path, device)
        normalizer = trained.normalizer(load_cuts(self.cuts), self.cuts)  # speakers' statistics of all jobs
        for cut, ll in iter_loglikes(
            model,
            trained,
            load_cuts(self.cuts).filter(InJob(job, nj)),
            acwt=1.0,
            prior_scale=self.prior_scale,
            device=device,
            normalizer=normalizer,
        ):
            yield cut.id, ll, float(cut.duration)
