"""Kaldi tables (archives and scp files), the one place that reads and writes them (through kaldi-native-io).

Alignments are int32-vector archives (what Kaldi's ali.*.gz hold, uncompressed); CMVN statistics are
double-matrix archives. Archives are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import kaldi_native_io as kio
import numpy as np

from asrhybrid.errors import DataError
from asrhybrid.outputs import atomic_output, temporary_sibling


def _require(path: Path) -> Path:
    if not Path(path).is_file():
        raise DataError([f"{path} not found (the stage that writes it has not run?)"])
    return Path(path)


def write_matrices(path: Path, matrices: dict[str, np.ndarray]) -> None:
    """A double-matrix archive, keys sorted (no scp: it would name the temporary file)."""
    with atomic_output(path) as tmp, kio.DoubleMatrixWriter(f"ark:{tmp}") as writer:
        for key in sorted(matrices):
            writer.write(key, matrices[key])


def read_matrices(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with kio.SequentialDoubleMatrixReader(f"ark:{_require(path)}") as reader:
        for key, mat in reader:
            out[key] = np.array(mat, copy=True)  # the reader reuses its buffer
    return out


@contextlib.contextmanager
def _table_writer(ark: Path, writer_class: str, convert) -> Iterator:
    """Stream a Kaldi table: yields ``write(key, value)``; on success ``ark`` and its ``.scp`` land together
    (written under temporary names first), so later steps can read entries by key."""
    ark = Path(ark)
    scp = ark.with_suffix(".scp")
    tmp_ark, tmp_scp = temporary_sibling(ark), temporary_sibling(scp)
    ark.parent.mkdir(parents=True, exist_ok=True)
    try:
        with getattr(kio, writer_class)(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
            yield lambda key, value: writer.write(key, convert(value))
        tmp_scp.write_text(tmp_scp.read_text().replace(str(tmp_ark), str(ark.resolve())))
        os.replace(tmp_ark, ark)  # both complete before either lands
        os.replace(tmp_scp, scp)
    finally:
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)


def alignment_table_writer(ark: Path):
    """An int32-vector table (alignments), streamed: ``with alignment_table_writer(ark) as write: write(utt, ids)``."""
    return _table_writer(ark, "Int32VectorWriter", lambda values: list(map(int, values)))


def merge_tables(parts: list[Path], ark: Path) -> None:
    """Kaldi tables written by jobs (``ali.1.ark`` .. with their .scp) as one (``ali.ark``, ``ali.scp``), in the
    given order: the archives concatenated (an archive is a sequence of entries), each scp offset moved by the
    bytes before its archive. Both land together, as a writer's do."""
    ark = Path(ark)
    scp = ark.with_suffix(".scp")
    tmp_ark, tmp_scp = temporary_sibling(ark), temporary_sibling(scp)
    try:
        base = 0
        with open(tmp_ark, "wb") as out_ark, open(tmp_scp, "w", encoding="utf-8") as out_scp:
            for part in map(Path, parts):
                for line in _require(part.with_suffix(".scp")).read_text(encoding="utf-8").splitlines():
                    key, where = line.split(" ", 1)
                    offset = int(where.rsplit(":", 1)[1])
                    out_scp.write(f"{key} {ark.resolve()}:{base + offset}\n")
                with open(_require(part), "rb") as f:
                    shutil.copyfileobj(f, out_ark)
                base += part.stat().st_size
        os.replace(tmp_ark, ark)
        os.replace(tmp_scp, scp)
    finally:
        tmp_ark.unlink(missing_ok=True)
        tmp_scp.unlink(missing_ok=True)


def matrix_table_writer(ark: Path):
    """A float-matrix table (per-utterance scores, what Kaldi's decoders read), streamed like the alignments."""
    return _table_writer(ark, "FloatMatrixWriter", lambda m: np.ascontiguousarray(m, dtype=np.float32))


def iter_matrices(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, matrix) of a float-matrix archive, in file order, one at a time."""
    with kio.SequentialFloatMatrixReader(f"ark:{_require(path)}") as reader:
        for key, value in reader:
            yield key, np.array(value, copy=True)  # the reader reuses its buffer


class AlignmentTable:
    """Random access by utterance to an int32-vector table written with its .scp (nothing held in memory)."""

    def __init__(self, ark: Path):
        self._reader = kio.RandomAccessInt32VectorReader(f"scp:{_require(Path(ark).with_suffix('.scp'))}")

    def __contains__(self, utt: str) -> bool:
        return utt in self._reader

    def __getitem__(self, utt: str) -> list[int]:
        return list(self._reader[utt])

    def close(self) -> None:
        self._reader.close()


def iter_alignments(path: Path) -> Iterator[tuple[str, list[int]]]:
    """(utterance, values) of an int32-vector archive, in file order, one at a time."""
    with kio.SequentialInt32VectorReader(f"ark:{_require(path)}") as reader:
        for key, value in reader:
            yield key, list(value)


def read_alignments(path: Path) -> dict[str, list[int]]:
    """A whole (small) alignment archive as a dict; streaming stages use :func:`iter_alignments` or
    :class:`AlignmentTable` instead."""
    return dict(iter_alignments(path))
