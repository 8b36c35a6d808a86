"""How a stage's utterances split into ``nj`` jobs: by a hash of the utterance id, the same in every process and
on every machine, so any job can be redone alone."""

from __future__ import annotations

import zlib


def job_of(utt: str, nj: int) -> int:
    """The job (1..nj) an utterance belongs to."""
    return zlib.crc32(utt.encode("utf-8")) % nj + 1


class InJob:
    """``cuts.filter(InJob(job, nj))``: the cuts of one job (a picklable predicate: Lhotse warns on lambdas)."""

    def __init__(self, job: int, nj: int):
        self.job, self.nj = job, nj

    def __call__(self, cut) -> bool:
        return job_of(cut.id, self.nj) == self.job
