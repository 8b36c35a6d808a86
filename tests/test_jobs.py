"""The job layer (asrhybrid.jobs) on real engines: a dask.distributed LocalCluster of worker processes and
submitit's local executor (real subprocesses, as on Slurm), against the local engine, on yesno decoding and
feature extraction: the same bytes out whichever engine ran the jobs, a worker killed mid-job survived, a job
that keeps failing named and redone alone once its input is fixed."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from conftest import require_shared
from test_decode import planted_pdf_scores, yesno_graph  # noqa: F401 - the module's fixture

from asrhybrid.jobs import JobsConfig, JobsFailed

NJ = 3


@pytest.fixture(scope="module")
def planted_archive(yesno_graph, tmp_path_factory):  # noqa: F811
    """A log-likelihood archive of 240 planted 8-word yesno utterances (noisy: real lattices)."""
    from asrhybrid.kaldi_tables import matrix_table_writer

    graph_dir, lang, tree, trans_model, words, _ = yesno_graph
    rng = np.random.default_rng(1)
    ark = tmp_path_factory.mktemp("jobs") / "loglikes.ark"
    with matrix_table_writer(ark) as write:
        for k in range(240):
            sentence = " ".join(rng.choice(["YES", "NO"], 8))
            write(f"utt{k:03d}", planted_pdf_scores(lang, tree, trans_model, words, [sentence], seed=k, noise=2.0))
    return graph_dir, ark


def _decode(graph_dir, ark, out, engine: JobsConfig):
    from asrhybrid.decode.corpus import decode_corpus
    from asrhybrid.decode.decoder import DecodeConfig
    from asrhybrid.decode.scores import LoglikeArchive

    return decode_corpus(graph_dir, LoglikeArchive(ark), out, DecodeConfig(acwt=0.5), nj=NJ, engine=engine)


def _job_outputs(decode_dir) -> dict[str, bytes]:
    names = [f"{kind}.{j}.{ext}" for j in range(1, NJ + 1) for kind, ext in (("lat", "gz"), ("best", "jsonl"))]
    return {name: (decode_dir / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def local_decode(planted_archive, tmp_path_factory):
    graph_dir, ark = planted_archive
    out = tmp_path_factory.mktemp("local") / "decode"
    summary = _decode(graph_dir, ark, out, JobsConfig(workers=1))
    assert summary["decoded"] == 240
    return out


def test_a_dask_cluster_decodes_the_same_bytes_as_local_processes(planted_archive, local_decode, tmp_path):
    graph_dir, ark = planted_archive
    summary = _decode(graph_dir, ark, tmp_path / "decode", JobsConfig(engine="dask", workers=2))
    assert summary["decoded"] == 240 and summary["nj"] == NJ
    assert _job_outputs(tmp_path / "decode") == _job_outputs(local_decode)
    for j in range(1, NJ + 1):  # each job's log on the shared filesystem, one attempt, from a worker process
        text = (tmp_path / "decode" / "log" / f"decode.{j}.log").read_text()
        assert text.count(" started ") == 1 and f"pid {os.getpid()}" not in text and " ended " in text


def test_submitits_local_executor_decodes_the_same_bytes(planted_archive, local_decode, tmp_path):
    graph_dir, ark = planted_archive
    engine = JobsConfig(engine="slurm", slurm={"cluster": "local", "time_min": 10})
    summary = _decode(graph_dir, ark, tmp_path / "decode", engine)
    assert summary["decoded"] == 240
    assert _job_outputs(tmp_path / "decode") == _job_outputs(local_decode)
    assert list((tmp_path / "decode" / "log" / "submitit").glob("*_log.out"))  # submitit's own logs beside ours


def _kill_a_running_job(log_dir, killed: list[int], timeout: float = 120) -> None:
    """SIGKILL the process of the first decode job seen running (its log's first line, no end yet): as the OOM
    killer or a lost node would."""
    deadline = time.time() + timeout
    while time.time() < deadline and not killed:
        for log in log_dir.glob("decode.*.log"):
            lines = log.read_text().splitlines()
            if len(lines) == 1 and " attempt 1 started " in lines[0]:
                pid = int(lines[0].rsplit("pid ", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


def _decode_with_a_worker_killed(graph_dir, ark, out, engine: JobsConfig, caplog) -> dict:
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_running_job, args=(out / "log", killed))
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="asrhybrid"):
            summary = _decode(graph_dir, ark, out, engine)
    finally:
        killer.join()
    assert killed, "no job was seen running"
    assert summary["decoded"] == 240
    retried = [log for log in (out / "log").glob("decode.*.log") if " attempt 2 started " in log.read_text()]
    assert any(f"pid {killed[0]}" in log.read_text() for log in retried)
    assert any("finished at attempt 2" in r.getMessage() for r in caplog.records)
    assert not list(out.glob(".tmp*")), "the lost attempt's temporaries are removed"
    return summary


def test_a_dask_worker_killed_mid_job_is_retried_and_the_outputs_are_the_same(
    planted_archive, local_decode, tmp_path, caplog
):
    """The test kills the worker process that runs a decode job: the scheduler runs the job again on a live
    worker (the nanny restarts the dead one), the stage finishes and logs the retry."""
    from distributed import Client, LocalCluster

    graph_dir, ark = planted_archive
    out = tmp_path / "decode"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        _decode_with_a_worker_killed(
            graph_dir, ark, out, JobsConfig(engine="dask", address=cluster.scheduler_address), caplog
        )
    finally:
        Client(cluster).close()
        cluster.close()
    assert _job_outputs(out) == _job_outputs(local_decode)
    retried = [log for log in (out / "log").glob("decode.*.log") if " attempt 2 started " in log.read_text()]
    assert len(retried) == 1  # the scheduler reran only the lost task


def test_a_local_worker_killed_mid_job_is_retried_and_the_outputs_are_the_same(
    planted_archive, local_decode, tmp_path, caplog
):
    """The same with the local engine's process pool: a dead worker breaks the pool, and the jobs it left
    unfinished run again in a new one."""
    graph_dir, ark = planted_archive
    out = tmp_path / "decode"
    _decode_with_a_worker_killed(graph_dir, ark, out, JobsConfig(workers=2), caplog)
    assert _job_outputs(out) == _job_outputs(local_decode)


def _fbank(manifest_dir, fbank_dir, engine: JobsConfig, resume_key="k"):
    from asrhybrid.features.compute import compute_fbank
    from asrhybrid.features.fbank import KaldiFbankConfig

    cfg = KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)
    compute_fbank(manifest_dir, fbank_dir, "yesno", "train", cfg, chunk_size=8, resume_key=resume_key, engine=engine)


def _features(fbank_dir) -> dict[str, np.ndarray]:
    from lhotse import load_manifest

    return {c.id: c.load_features() for c in load_manifest(fbank_dir / "yesno_cuts_train.jsonl.gz")}


@pytest.fixture(scope="module")
def yesno_manifests(tmp_path_factory):
    """A copy of the yesno corpus (a test corrupts a file of it), its manifests, and its training features
    computed by one local job at a time: (corpus, manifest dir, features by cut)."""
    from asrhybrid.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("fbank_jobs")
    corpus = root / "corpus"
    shutil.copytree(require_shared("corpora", "yesno", "waves_yesno"), corpus)
    prepare_data("yesno", "yesno", corpus, root / "m", 8000)
    _fbank(root / "m", root / "local", JobsConfig(workers=1))
    return corpus, root / "m", root / "local"


def test_fbank_on_dask_equals_local(yesno_manifests, tmp_path):
    from asrhybrid.features.layout import FeatureSet

    _, manifests, local_dir = yesno_manifests
    _fbank(manifests, tmp_path / "dask", JobsConfig(engine="dask", workers=2))
    local, dask = _features(local_dir), _features(tmp_path / "dask")
    assert list(local) == list(dask) and len(local) == 30  # 4 chunks of 8, 8, 8, 6 cuts
    assert all(np.array_equal(local[k], dask[k]) for k in local)
    chunks = sorted(FeatureSet(local_dir, "yesno", "train").feats_dir.glob("chunk-*.lca"))
    assert len(chunks) == 4 and all(
        c.read_bytes() == (FeatureSet(tmp_path / "dask", "yesno", "train").feats_dir / c.name).read_bytes()
        for c in chunks
    )


@pytest.mark.parametrize(
    "engine",
    [
        JobsConfig(workers=2),
        JobsConfig(engine="dask", workers=2),
        JobsConfig(engine="slurm", slurm={"cluster": "local", "time_min": 10}),
    ],
    ids=["local", "dask", "submitit"],
)
def test_a_corrupt_file_stops_only_its_chunk_and_a_rerun_redoes_only_it(yesno_manifests, tmp_path, engine):
    """The first file of chunk 2 (cuts 16..23 by id) cut short after its header: that chunk fails three times
    (two retries) on every engine, the others finish, nothing is joined; fixed, a re-run computes chunk 2 alone."""
    from asrhybrid.features.layout import FeatureSet

    corpus, manifests, local_dir = yesno_manifests
    local = _features(local_dir)
    bad = corpus / f"{sorted(local)[16]}.wav"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:30])
    out = tmp_path / "retry"
    try:
        with pytest.raises(JobsFailed, match=r"job fbank\.train\.2 failed: .*\(log: .*fbank\.train\.2\.log\)"):
            _fbank(manifests, out, engine)
    finally:
        bad.write_bytes(good_bytes)  # fixed (the corpus is the module's)
    feats = FeatureSet(out, "yesno", "train")
    assert not feats.cuts.exists()
    done = {p.name: p.stat().st_mtime_ns for p in feats.feats_dir.glob("chunk-*.jsonl.gz")}
    assert sorted(done) == ["chunk-0000.jsonl.gz", "chunk-0001.jsonl.gz", "chunk-0003.jsonl.gz"]
    assert (feats.feats_dir / "log" / "fbank.train.2.log").read_text().count(" started ") == 3
    _fbank(manifests, out, engine)
    assert {n: (feats.feats_dir / n).stat().st_mtime_ns for n in done} == done
    again = _features(out)
    assert all(np.array_equal(local[k], again[k]) for k in local)
