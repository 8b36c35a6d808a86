"""Kill-and-resume: a stage killed mid-way and re-run gives the outputs of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from lhotse import load_manifest

from conftest import asrhybrid_cmd
from test_data_bad_input import make_kaldi_dir, write_wav


def corpus_of(tmp_path, n=40):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    utts = [(f"s-{i:03d}", "s", f"WORD {i}", write_wav(wavs / f"{i}.wav", seconds=1.0, seed=i)) for i in range(n)]
    return make_kaldi_dir(tmp_path / "corpus", utts)


def run(args, **kw):
    return subprocess.run(asrhybrid_cmd() + args, capture_output=True, text=True, timeout=600, **kw)


def fbank_args(manifests, out):
    return ["compute-fbank", str(manifests), str(out), "--corpus", "t", "--chunk-size", "1", "--opt", "num_mel_bins=40"]


def features(fbank_dir):
    cuts = load_manifest(fbank_dir / "t_cuts_train.jsonl.gz")
    return {c.id: c.load_features() for c in cuts}


def test_fbank_killed_midway_resumes_to_the_same_features(tmp_path):
    corpus = corpus_of(tmp_path)
    manifests = tmp_path / "m"
    assert run(["prepare-data", str(corpus), str(manifests), "--corpus", "t", "--preparer", "kaldi",
                "--sample-rate", "16000"]).returncode == 0

    reference = tmp_path / "ref"
    assert run(fbank_args(manifests, reference)).returncode == 0

    out = tmp_path / "f"
    proc = subprocess.Popen(asrhybrid_cmd() + fbank_args(manifests, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    chunks = out / "t_feats_train"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(chunks.glob("chunk-*.jsonl.gz"))) < 3:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(chunks.glob("chunk-*.jsonl.gz")))
    assert 3 <= finished < 40, "the kill must land mid-way"
    assert not (out / "t_cuts_train.jsonl.gz").exists()

    resumed = run(fbank_args(manifests, out))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished} of 40 chunks already done" in resumed.stderr or f"{finished + 1} of 40" in resumed.stderr
    assert not [p for p in chunks.iterdir() if p.name.startswith(".tmp")]
    got, want = features(out), features(reference)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])

    again = run(fbank_args(manifests, out))
    assert again.returncode == 0 and "already done" in again.stderr


def test_synth_killed_midway_resumes_to_the_same_corpus(tmp_path):
    opts = ["--opt", "train_hours=0.05", "--opt", "dev_minutes=0.2", "--opt", "test_minutes=0.2"]
    assert run(["synth-corpus", str(tmp_path / "ref"), *opts]).returncode == 0
    proc = subprocess.Popen(asrhybrid_cmd() + ["synth-corpus", str(tmp_path / "s"), *opts],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "s").rglob("*.wav"))) < 5:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "s" / "metadata.jsonl").exists(), "the kill must land mid-way"
    assert run(["synth-corpus", str(tmp_path / "s"), *opts]).returncode == 0
    ref = {p.relative_to(tmp_path / "ref"): p.read_bytes() for p in (tmp_path / "ref").rglob("*") if p.is_file()}
    got = {p.relative_to(tmp_path / "s"): p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert got == ref


def test_completion_markers_compare_paths_not_their_spelling(tmp_path, monkeypatch):
    """A finished step re-run with the same file named relatively is a no-op; another file is a stale-output error."""
    import pytest

    from asrhybrid.errors import StaleOutputError
    from asrhybrid.recipe.outputs import Completion

    (tmp_path / "words.txt").write_text("a 1\n")
    (tmp_path / "other.txt").write_text("b 1\n")
    Completion(tmp_path / "out", "step", {"words": str(tmp_path / "words.txt"), "order": 2}).mark_done()
    monkeypatch.chdir(tmp_path)
    assert Completion(tmp_path / "out", "step", {"words": "words.txt", "order": 2}).is_done()
    assert Completion(tmp_path / "out", "step", {"words": Path("./words.txt"), "order": 2}).is_done()
    with pytest.raises(StaleOutputError, match="words"):
        Completion(tmp_path / "out", "step", {"words": "other.txt", "order": 2}).is_done()
