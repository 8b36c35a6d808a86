"""Decoding a corpus into a decode directory (Kaldi's decode.sh / latgen-faster-mapped, with k2).

A decode directory holds, per job ``n`` of ``nj``:

- ``lat.n.gz``: the word lattices, a Kaldi text CompactLattice archive
  (:mod:`asrhybrid.decode.lattice`: words as ids of the graph's ``words.txt``,
  costs graph,acoustic with the acoustic cost unscaled, transition ids as the
  strings), what ``lattice-copy ark,t:`` prints of Kaldi's own ``lat.n.gz``;
- ``best.n.jsonl``: per utterance its 1-best at the decoding acoustic scale
  (``words``, ``tids``, ``cost``, ``frames``, ``lattice_arcs``), or ``error``;

and ``decode.json``: the options, the graph and scores it came from, counts
(utterances, failed ones with their reasons, frames), speed and lattice
density; ``words.txt`` is the graph's, so the directory reads by itself.
An utterance that cannot be decoded (a score matrix of the wrong width, zero
frames, no path within the beams) is reported and counted; the others go on.

Utterances go to job ``n`` by a hash of their id (asrhybrid.jobs.job_of); the
jobs run on the run's engine (asrhybrid.jobs: local processes, Dask, Slurm),
each writing its files under temporary names renamed when complete and its
counts last (``.job.n.json``), with its log in ``log/decode.n.log``, so a
killed decode resumes from the jobs it finished.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np

from asrhybrid.decode.decoder import DecodeConfig, Hypothesis, KaldiDecoder, decode_batch
from asrhybrid.decode.lattice import read_kaldi_lattices, write_kaldi_lattices
from asrhybrid.decode.scores import ScoreSource
from asrhybrid.determinism import intra_op_threads
from asrhybrid.errors import DataError
from asrhybrid.graph.k2graph import DecodingGraph
from asrhybrid.jobs import JobsConfig, run_jobs, split_jobs, unfinished
from asrhybrid.outputs import atomic_output, remove_stale_temporaries, write_text_atomic

log = logging.getLogger(__name__)


def frame_batches(scores: Iterator[tuple], max_frames: int):
    """Lists of consecutive ``(utt, scores [T, C], ...)`` items of at most ``max_frames`` frames (one item if longer)."""
    batch, frames = [], 0
    for item in scores:
        n = item[1].shape[0] if item[1].ndim == 2 else 0
        if batch and frames + n > max_frames:
            yield batch
            batch, frames = [], 0
        batch.append(item)
        frames += n
    if batch:
        yield batch


def decode_job(
    graph_dir: Path,
    source: ScoreSource,
    out_dir: Path,
    cfg: DecodeConfig,
    job: int,
    nj: int,
    device: str = "cpu",
    compare_kaldi: bool = False,
) -> dict:
    """Decode job ``job`` of ``nj`` into ``out_dir/lat.job.gz`` and ``best.job.jsonl``, then its counts into
    ``.job.job.json`` (written last: the job is done when it exists); returns them."""
    with intra_op_threads(1 if device == "cpu" and nj > 1 else None):
        graph = DecodingGraph.load(graph_dir)
        kaldi = KaldiDecoder(graph, cfg) if compare_kaldi else None
        stats = {
            "utterances": 0,
            "failed": [],
            "frames": 0,
            "audio_seconds": 0.0,
            "decode_seconds": 0.0,
            "search_seconds": 0.0,
            "state_lattice_arcs": 0,
            "lattice_arcs": 0,
            "kaldi": None,
        }
        if kaldi is not None:
            stats["kaldi"] = {
                "compared": 0,
                "same_words": 0,
                "k2_better_or_equal": 0,
                "kaldi_better": [],
                "seconds": 0.0,
            }
        with (
            atomic_output(out_dir / f"best.{job}.jsonl") as best_tmp,
            atomic_output(out_dir / f"lat.{job}.gz") as lat_tmp,
        ):
            with open(best_tmp, "w", encoding="utf-8") as best_file:

                def results():
                    for batch in frame_batches(source.scores(job, nj, device), cfg.batch_frames):
                        start = time.perf_counter()
                        hyps = decode_batch(graph, [(u, ll) for u, ll, _ in batch], cfg, device)
                        stats["decode_seconds"] += time.perf_counter() - start
                        for (utt, ll, seconds), hyp in zip(batch, hyps):
                            _record(stats, hyp, ll, seconds)
                            if kaldi is not None and hyp.ok:
                                _compare(stats["kaldi"], hyp, kaldi, ll)
                            best_file.write(
                                json.dumps(
                                    {
                                        "utt": utt,
                                        "words": [graph.words[w] for w in hyp.words],
                                        "tids": hyp.tids,
                                        "cost": round(hyp.cost, 4),
                                        "frames": int(ll.shape[0]) if ll.ndim == 2 else 0,
                                        "lattice_arcs": hyp.lattice_arcs,
                                        "error": hyp.error,
                                    }
                                )
                                + "\n"
                            )
                            if hyp.ok:
                                yield utt, hyp.lattice

                write_kaldi_lattices(lat_tmp, results())
        write_text_atomic(out_dir / f".job.{job}.json", json.dumps(stats) + "\n")
        return stats


def _record(stats: dict, hyp: Hypothesis, ll: np.ndarray, seconds: float) -> None:
    stats["utterances"] += 1
    if not hyp.ok:
        stats["failed"].append({"utt": hyp.utt, "error": hyp.error})
        log.error("%s", hyp.error)
        return
    stats["frames"] += int(ll.shape[0])
    stats["audio_seconds"] += seconds
    stats["state_lattice_arcs"] += hyp.lattice_arcs
    stats["lattice_arcs"] += len(hyp.lattice.arcs) if hyp.lattice is not None else 0


def _compare(stats: dict, hyp: Hypothesis, kaldi: KaldiDecoder, ll: np.ndarray) -> None:
    start = time.perf_counter()
    ref = kaldi.decode(hyp.utt, ll)
    stats["seconds"] += time.perf_counter() - start
    if not ref.ok:
        return
    stats["compared"] += 1
    if ref.words == hyp.words:
        stats["same_words"] += 1
    if hyp.cost <= ref.cost + 1e-3 * max(1.0, abs(ref.cost)):
        stats["k2_better_or_equal"] += 1
    else:
        stats["kaldi_better"].append({"utt": hyp.utt, "k2_cost": round(hyp.cost, 4), "kaldi_cost": round(ref.cost, 4)})


def decode_corpus(
    graph_dir: Path | str,
    source: ScoreSource,
    out_dir: Path | str,
    cfg: DecodeConfig | None = None,
    nj: int = 1,
    device: str = "cpu",
    compare_kaldi: bool = False,
    engine: JobsConfig | None = None,
) -> dict:
    """Decode every utterance of ``source`` (asrhybrid.decode.scores) into ``out_dir`` (see the module's doc) with
    ``nj`` jobs on ``engine`` (default: processes on this machine); the jobs already complete there (same
    options: the verb clears the folder otherwise) are kept. Returns decode.json."""
    cfg = cfg or DecodeConfig()
    engine = engine or JobsConfig()
    graph_dir, out_dir = Path(graph_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = DecodingGraph.load(graph_dir)  # errors before any job starts; caches the k2 form for the jobs
    if source.kind != "archive":
        if (source.kind == "ctc") != graph.is_hlg:
            what = "a CTC system" if source.kind == "ctc" else "an acoustic model"
            raise DataError(
                [
                    f"{graph_dir}: {'an HLG' if graph.is_hlg else 'an HCLG'} graph cannot decode {what} "
                    f"({source.path}): HCLG (mkgraph) decodes acoustic models, HLG (mkgraph-ctc) CTC systems"
                ]
            )
        width, unit = source.num_outputs, ("tokens" if source.kind == "ctc" else "pdfs")
        if width != graph.num_pdfs:
            what = "the CTC system" if source.kind == "ctc" else "the acoustic model"
            why = "token sets" if source.kind == "ctc" else "trees"
            raise DataError(
                [
                    f"{source.path}: {what} has {width} {unit}, the graph {graph_dir} was built for "
                    f"{graph.num_pdfs}: they come from different {why}"
                ]
            )
    if compare_kaldi and graph.is_hlg:
        raise DataError([f"{graph_dir}: Kaldi's decoder needs an HCLG and its model; an HLG has no Kaldi reference"])
    shared = {"graph_dir": graph_dir, "source": source, "out_dir": out_dir, "cfg": cfg, "device": device}
    jobs = split_jobs("decode", decode_job, nj, {**shared, "compare_kaldi": compare_kaldi})
    # a job is done when its counts, written last, are there (its lattices and best paths landed before)
    todo = unfinished(jobs, lambda j: out_dir / f".job.{j}.json", str(out_dir))
    start = time.perf_counter()
    run_jobs(todo, engine.on_device(device), out_dir / "log", desc=f"decode {out_dir.name}")
    remove_stale_temporaries(out_dir)  # what the attempts of lost workers began
    wall = time.perf_counter() - start
    summary = _summary(out_dir, nj, cfg, graph_dir, source, device, wall)
    write_text_atomic(out_dir / "decode.json", json.dumps(summary, indent=1) + "\n")
    (out_dir / "words.txt").write_bytes((graph_dir / "words.txt").read_bytes())
    return summary


def _summary(
    out_dir: Path, nj: int, cfg: DecodeConfig, graph_dir: Path, source: ScoreSource, device: str, wall: float
) -> dict:
    jobs = [json.loads((out_dir / f".job.{j}.json").read_text()) for j in range(1, nj + 1)]
    total = {
        key: sum(j[key] for j in jobs)
        for key in ("utterances", "frames", "audio_seconds", "decode_seconds", "state_lattice_arcs", "lattice_arcs")
    }
    failed = [f for j in jobs for f in j["failed"]]
    frames = max(1, total["frames"])
    cuts = getattr(source, "cuts", None)
    summary = {
        "config": asdict(cfg),
        "graph": str(graph_dir),
        "scores": str(source.path),
        "cuts": str(cuts) if cuts else None,
        "nj": nj,
        "device": device,
        "utterances": total["utterances"],
        "decoded": total["utterances"] - len(failed),
        "failed": failed,
        "frames": total["frames"],
        # feature frames per lattice frame (Kaldi's frame_subsampling_factor: a chain model's 3), for CTM times
        "frame_subsampling_factor": getattr(source, "frame_step", 1),
        "decode_frames_per_second": round(total["frames"] / max(1e-9, total["decode_seconds"]), 1),
        "real_time_factor": (
            round(total["decode_seconds"] / total["audio_seconds"], 5) if total["audio_seconds"] else None
        ),
        "state_lattice_arcs_per_frame": round(total["state_lattice_arcs"] / frames, 2),
        "lattice_arcs_per_frame": round(total["lattice_arcs"] / frames, 4),
        "wall_seconds_this_run": round(wall, 2),
    }
    if jobs and jobs[0]["kaldi"] is not None:
        k = {
            key: sum(j["kaldi"][key] for j in jobs)
            for key in ("compared", "same_words", "k2_better_or_equal", "seconds")
        }
        k["kaldi_better"] = [d for j in jobs for d in j["kaldi"]["kaldi_better"]]
        k["same_words_fraction"] = round(k["same_words"] / max(1, k["compared"]), 4)
        summary["kaldi_reference"] = k
    return summary


def read_best(decode_dir: Path | str) -> Iterator[dict]:
    """The 1-best records of a decode directory (every job, in job order)."""
    decode_dir = Path(decode_dir)
    nj = json.loads((decode_dir / "decode.json").read_text())["nj"]
    for j in range(1, nj + 1):
        with open(decode_dir / f"best.{j}.jsonl", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def lattice_files(decode_dir: Path | str) -> list[Path]:
    """The lattice archives of a decode directory: ``lat.1.gz``, ``lat.2.gz``, ... in job order."""
    decode_dir = Path(decode_dir)
    files = sorted(
        decode_dir.glob("lat.*.gz"), key=lambda p: int(p.name.split(".")[1]) if p.name.split(".")[1].isdigit() else 0
    )
    if not files:
        raise DataError([f"{decode_dir}: no lattices (lat.N.gz): not a decode directory"])
    return files


def iter_lattices(decode_dir: Path | str, bad: list[str] | None = None):
    """(utt, WordLattice) of every lattice of a decode directory, one at a time; with ``bad``, corrupt lattices
    are skipped and their errors appended there."""
    for path in lattice_files(decode_dir):
        yield from read_kaldi_lattices(path, bad)
