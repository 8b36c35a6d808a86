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


def test_a_worker_killed_mid_job_is_retried_and_the_outputs_are_the_same(
    planted_archive, local_decode, tmp_path, caplog
):
    """The test kills the worker process that runs a decode job (SIGKILL, as the OOM killer or a lost node):
    the scheduler runs the job again on a live worker, the stage finishes and logs the retry."""
    from distributed import Client, LocalCluster

    graph_dir, ark = planted_archive
    out = tmp_path / "decode"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR)
    killed: list[int] = []

    def kill_a_running_job():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for log in (out / "log").glob("decode.*.log"):
                lines = log.read_text().splitlines()
                if len(lines) == 1 and " attempt 1 started " in lines[0]:  # running, not ended
                    pid = int(lines[0].rsplit("pid ", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_running_job)
    try:
        killer.start()
        with caplog.at_level(logging.WARNING, logger="asrhybrid"):
            summary = _decode(graph_dir, ark, out, JobsConfig(engine="dask", address=cluster.scheduler_address))
        killer.join()
    finally:
        Client(cluster).close()
        cluster.close()
    assert killed, "no job was seen running"
    assert summary["decoded"] == 240
    assert _job_outputs(out) == _job_outputs(local_decode)
    retried = [log for log in (out / "log").glob("decode.*.log") if " attempt 2 started " in log.read_text()]
    assert len(retried) == 1 and f"pid {killed[0]}" in retried[0].read_text()
    assert any("finished at attempt 2" in r.getMessage() for r in caplog.records)


def _fbank(manifest_dir, fbank_dir, engine: JobsConfig, resume_key="k"):
    from asrhybrid.features.compute import compute_fbank
    from asrhybrid.features.fbank import KaldiFbankConfig

    cfg = KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)
    compute_fbank(manifest_dir, fbank_dir, "yesno", "train", cfg, chunk_size=8, resume_key=resume_key, engine=engine)


def _features(fbank_dir) -> dict[str, np.ndarray]:
    from lhotse import load_manifest

    return {c.id: c.load_features() for c in load_manifest(fbank_dir / "yesno_cuts_train.jsonl.gz")}


def test_fbank_on_dask_equals_local_and_a_corrupt_file_stops_only_its_chunk(tmp_path, caplog):
    from asrhybrid.data.prepare import prepare_data
    from asrhybrid.features.layout import FeatureSet

    corpus = tmp_path / "corpus"
    shutil.copytree(require_shared("corpora", "yesno", "waves_yesno"), corpus)
    prepare_data("yesno", "yesno", corpus, tmp_path / "m", 8000)
    _fbank(tmp_path / "m", tmp_path / "local", JobsConfig(workers=1))
    _fbank(tmp_path / "m", tmp_path / "dask", JobsConfig(engine="dask", workers=2))
    local, dask = _features(tmp_path / "local"), _features(tmp_path / "dask")
    assert list(local) == list(dask) and len(local) == 30  # 4 chunks of 8, 8, 8, 6 cuts
    assert all(np.array_equal(local[k], dask[k]) for k in local)
    chunks = sorted(FeatureSet(tmp_path / "local", "yesno", "train").feats_dir.glob("chunk-*.lca"))
    assert len(chunks) == 4 and all(
        c.read_bytes() == (FeatureSet(tmp_path / "dask", "yesno", "train").feats_dir / c.name).read_bytes()
        for c in chunks
    )
    # the first file of chunk 2 (cuts 16..23 by id) cut short after its header: that chunk fails three times
    # (two retries), the others finish; nothing is joined
    bad = corpus / f"{sorted(local)[16]}.wav"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:30])
    out = tmp_path / "retry"
    with pytest.raises(JobsFailed, match=r"job fbank\.train\.2 failed: .*\(log: .*fbank\.train\.2\.log\)"):
        _fbank(tmp_path / "m", out, JobsConfig(engine="dask", workers=2))
    feats = FeatureSet(out, "yesno", "train")
    assert not feats.cuts.exists()
    done = {p.name: p.stat().st_mtime_ns for p in feats.feats_dir.glob("chunk-*.jsonl.gz")}
    assert sorted(done) == ["chunk-0000.jsonl.gz", "chunk-0001.jsonl.gz", "chunk-0003.jsonl.gz"]
    assert (feats.feats_dir / "log" / "fbank.train.2.log").read_text().count(" started ") == 3
    bad.write_bytes(good_bytes)  # fixed: the re-run computes only chunk 2
    _fbank(tmp_path / "m", out, JobsConfig(engine="dask", workers=2))
    assert {n: (feats.feats_dir / n).stat().st_mtime_ns for n in done} == done
    again = _features(out)
    assert all(np.array_equal(local[k], again[k]) for k in local)
