"""Stage 1: fbank features for every cut, stored with Lhotse's LilcomChunkyWriter.

Per part, cuts are cut into fixed chunks (sorted by id, ``chunk_size`` cuts
each). A chunk writes ``chunk-NNNN.lca`` and then ``chunk-NNNN.jsonl.gz``, both
under temporary names renamed when complete, so a killed run resumes at the
first unfinished chunk and redoes nothing else. A chunk is a job
(asrhybrid.jobs: ``fbank.<part>.K``, its log in the part's ``feats/log``) on
the run's engine: ``num_jobs`` processes on this machine by default, or Dask
or Slurm; on CUDA one process feeds kaldifeat batches of ``batch_duration``
seconds. (Lhotse's own ``compute_and_store_features(executor=)`` splits a cut
set the same way but writes one storage per split without resuming a killed
split; the chunks here are jobs that any engine can redo alone.) The chunks are then joined into icefall's
``<corpus>_cuts_<part>.jsonl.gz`` and CMVN statistics are written beside it
(asrhybrid.features.layout has the layout).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from lhotse import CutSet, Features, load_manifest
from lhotse.features.io import LilcomChunkyWriter
from lhotse.utils import fastcopy

from asrhybrid.data.manifests import manifest_paths
from asrhybrid.determinism import intra_op_threads
from asrhybrid.errors import DataError
from asrhybrid.features.cmvn import CmvnStats, speaker_of, write_cmvn
from asrhybrid.features.fbank import KaldiFbank, KaldiFbankConfig
from asrhybrid.features.layout import FeatureSet
from asrhybrid.jobs import Job, JobsConfig, run_jobs
from asrhybrid.outputs import atomic_output, remove_stale_temporaries, resume_or_clear

log = logging.getLogger(__name__)


def cuts_from_manifests(manifest_dir: Path, corpus: str, part: str) -> CutSet:
    """One cut per supervision, with the supervision's id (segments give several per recording)."""
    rec_path, sup_path = manifest_paths(manifest_dir, corpus, part)
    for p in (rec_path, sup_path):
        if not p.is_file():
            raise DataError([f"{p} not found: run the data stage (asrhybrid prepare-data) first"])
    recordings, supervisions = load_manifest(rec_path), load_manifest(sup_path)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    whole = all(
        len(c.supervisions) == 1
        and c.supervisions[0].start == 0
        and abs(c.supervisions[0].duration - c.duration) < 1e-3
        for c in cuts
    )
    if not whole:
        cuts = cuts.trim_to_supervisions(keep_overlapping=False)
    cuts = CutSet.from_cuts(fastcopy(c, id=c.supervisions[0].id) for c in cuts)
    return cuts.sort_by_recording_id() if whole else CutSet.from_cuts(sorted(cuts, key=lambda c: c.id))


def _batches(cuts: list, max_duration: float):
    batch, total = [], 0.0
    for cut in cuts:
        if batch and total + cut.duration > max_duration:
            yield batch
            batch, total = [], 0.0
        batch.append(cut)
        total += cut.duration
    if batch:
        yield batch


def compute_chunk(cuts: list, config: dict, lca_path: Path, manifest_path: Path, batch_duration: float) -> None:
    """Features of one chunk of cuts into ``lca_path``, then its cut manifest into ``manifest_path``."""
    extractor = KaldiFbank(KaldiFbankConfig(**config))
    out_cuts = []
    with atomic_output(lca_path) as tmp_lca, LilcomChunkyWriter(tmp_lca) as writer, ThreadPoolExecutor(2) as io:
        for batch in _batches(cuts, batch_duration):
            audio = list(io.map(lambda c: c.load_audio()[0], batch))
            feats = extractor.extract_batch(audio, sampling_rate=extractor.config.sampling_rate)
            for cut, mat in zip(batch, feats):
                key = writer.write(cut.id, mat)
                features = Features(
                    type=extractor.name,
                    num_frames=mat.shape[0],
                    num_features=mat.shape[1],
                    frame_shift=extractor.frame_shift,
                    sampling_rate=cut.sampling_rate,
                    start=cut.start,
                    duration=cut.duration,
                    storage_type=writer.name,
                    storage_path=str(lca_path.resolve()),
                    storage_key=key,
                    recording_id=cut.recording_id,
                    channels=cut.channel,
                )
                out_cuts.append(fastcopy(cut, features=features))
    with atomic_output(manifest_path) as tmp:
        CutSet.from_cuts(out_cuts).to_file(tmp)


def process_chunk(cuts: list, config: dict, lca_path: Path, manifest_path: Path, batch_duration: float):
    """Compute a chunk unless it is done; return (computed, {speaker: Kaldi CMVN stats}).

    The statistics are of the features as stored (after lilcom), as training reads
    them, like Kaldi's compute-cmvn-stats on compressed features. A job: one core.
    """
    computed = not manifest_path.is_file()
    if computed:
        with intra_op_threads(1):
            compute_chunk(cuts, config, lca_path, manifest_path, batch_duration)
    stats: dict[str, CmvnStats] = {}
    for cut in load_manifest(manifest_path):
        feats = cut.load_features()
        stats.setdefault(speaker_of(cut), CmvnStats(feats.shape[1])).accumulate(feats)
    return computed, stats


def compute_fbank(
    manifest_dir: Path | str,
    fbank_dir: Path | str,
    corpus: str,
    part: str,
    config: KaldiFbankConfig,
    num_jobs: int = 1,
    chunk_size: int = 500,
    batch_duration: float | None = None,
    resume_key: str | None = None,
    engine: JobsConfig | None = None,
) -> None:
    """Features of one part laid out as asrhybrid.features.layout says: the cuts, their lilcom chunks and the
    CMVN statistics. Chunks of a killed run are kept when it ran under ``resume_key`` (None: start over).
    The chunks run on ``engine`` (default: ``num_jobs`` processes here)."""
    manifest_dir, fbank_dir = Path(manifest_dir), Path(fbank_dir)
    fbank_dir.mkdir(parents=True, exist_ok=True)
    features = FeatureSet(fbank_dir, corpus, part)
    device = config.resolved_device()
    # kaldifeat on CPU is fastest on about a minute of audio at a time (cache-sized
    # intermediates; 600 s batches ran at under half the speed); a GPU wants more.
    batch_duration = batch_duration or (60.0 if device == "cpu" else 600.0)
    feats_dir = features.feats_dir
    cuts = list(cuts_from_manifests(manifest_dir, corpus, part))
    resume_or_clear(feats_dir, resume_key)  # chunks of other options or inputs (or a forced run) go
    remove_stale_temporaries(feats_dir)

    chunks = [cuts[i : i + chunk_size] for i in range(0, len(cuts), chunk_size)]
    paths = [(feats_dir / f"chunk-{k:04d}.lca", feats_dir / f"chunk-{k:04d}.jsonl.gz") for k in range(len(chunks))]
    finished = sum(m.is_file() for _, m in paths)
    if finished:
        log.info("fbank %s/%s: resuming, %d of %d chunks already done", corpus, part, finished, len(chunks))
    cfg = asdict(config)
    cfg["device"] = device
    engine = (engine or JobsConfig(workers=num_jobs)).on_device(device)
    jobs = [
        Job(
            f"fbank.{part}.{k}",
            process_chunk,
            {
                "cuts": chunks[k],
                "config": cfg,
                "lca_path": paths[k][0],
                "manifest_path": paths[k][1],
                "batch_duration": batch_duration,
            },
        )
        for k in range(len(chunks))
    ]
    results = run_jobs(jobs, engine, feats_dir / "log", desc=f"fbank {part} ({len(cuts)} cuts)")
    remove_stale_temporaries(feats_dir)  # what the attempts of lost workers began
    speakers: dict[str, CmvnStats] = {}
    for job in jobs:  # in chunk order: the same sums whichever order the jobs ended in
        for speaker, st in results[job.name][1].items():
            speakers.setdefault(speaker, CmvnStats(st.stats.shape[1] - 1)).stats += st.stats

    # gzip members concatenate into one valid gzip file: join the chunk manifests as bytes.
    with atomic_output(features.cuts) as tmp, open(tmp, "wb") as out:
        for _, m in paths:
            out.write(m.read_bytes())
    total = CmvnStats(next(iter(speakers.values())).stats.shape[1] - 1)
    for st in speakers.values():
        total.stats += st.stats
    write_cmvn(features.speaker_cmvn, speakers)
    write_cmvn(features.global_cmvn, {"global": total})
    log.info(
        "fbank %s/%s: %d cuts, %d frames, dim %d, %s on %s",
        corpus,
        part,
        len(cuts),
        int(total.count),
        total.stats.shape[1] - 1,
        config.resolved_backend(),
        device,
    )
