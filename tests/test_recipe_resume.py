"""Kill-and-resume: a stage killed mid-way and re-run gives the outputs of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from conftest import asrhybrid_cmd
from lhotse import load_manifest
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
    assert (
        run(
            [
                "prepare-data",
                str(corpus),
                str(manifests),
                "--corpus",
                "t",
                "--preparer",
                "kaldi",
                "--sample-rate",
                "16000",
            ]
        ).returncode
        == 0
    )

    reference = tmp_path / "ref"
    assert run(fbank_args(manifests, reference)).returncode == 0

    out = tmp_path / "f"
    proc = subprocess.Popen(
        asrhybrid_cmd() + fbank_args(manifests, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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


def data_files(root):
    """Every file but completion markers (a stamp of their own run), resume records and job logs."""
    return {
        p.relative_to(root): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".done." not in p.name and p.name != ".resume.json" and p.relative_to(root).parts[0] != "log"
    }


def kill_synth_midway(out, opts):
    proc = subprocess.Popen(
        asrhybrid_cmd() + ["synth-corpus", str(out), *opts],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("*.wav"))) < 5:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metadata.jsonl").exists(), "the kill must land mid-way"


def test_synth_killed_midway_resumes_to_the_same_corpus(tmp_path):
    opts = ["--opt", "train_hours=0.05", "--opt", "dev_minutes=0.2", "--opt", "test_minutes=0.2"]
    assert run(["synth-corpus", str(tmp_path / "ref"), *opts]).returncode == 0
    kill_synth_midway(tmp_path / "s", opts)
    assert run(["synth-corpus", str(tmp_path / "s"), *opts]).returncode == 0
    assert data_files(tmp_path / "s") == data_files(tmp_path / "ref")


def test_killed_then_rerun_with_other_options_mixes_nothing(tmp_path):
    """The WAVs of a killed run with seed 0 are not reused by a run with seed 5: it equals a fresh seed-5 corpus."""
    opts = ["--opt", "train_hours=0.05", "--opt", "dev_minutes=0.2", "--opt", "test_minutes=0.2"]
    kill_synth_midway(tmp_path / "s", opts + ["--opt", "seed=0"])
    result = run(["synth-corpus", str(tmp_path / "s"), *opts, "--opt", "seed=5"])
    assert result.returncode == 0
    assert run(["synth-corpus", str(tmp_path / "ref"), *opts, "--opt", "seed=5"]).returncode == 0
    assert data_files(tmp_path / "s") == data_files(tmp_path / "ref")


def test_completion_markers_compare_paths_not_their_spelling(tmp_path, monkeypatch):
    """A finished step re-run with the same file named relatively is a no-op; another file is a stale-output error."""
    import pytest

    from asrhybrid.errors import StaleOutputError
    from asrhybrid.outputs import Completion

    (tmp_path / "words.txt").write_text("a 1\n")
    (tmp_path / "other.txt").write_text("b 1\n")
    Completion(tmp_path / "out", "step", {"words": str(tmp_path / "words.txt"), "order": 2}).mark_done()
    monkeypatch.chdir(tmp_path)
    assert Completion(tmp_path / "out", "step", {"words": "words.txt", "order": 2}).is_done()
    assert Completion(tmp_path / "out", "step", {"words": Path("./words.txt"), "order": 2}).is_done()
    with pytest.raises(StaleOutputError, match="words"):
        Completion(tmp_path / "out", "step", {"words": "other.txt", "order": 2}).is_done()


def test_markers_redo_a_step_whose_inputs_changed(tmp_path, caplog):
    """Make-like markers: a step reading another step's output redoes when that step ran again; a step reading a
    plain file redoes when its content changed; its own re-run with nothing changed is a no-op."""
    import logging

    from asrhybrid.outputs import Completion, input_stamp

    caplog.set_level(logging.INFO)
    up, down, text = tmp_path / "up", tmp_path / "down", tmp_path / "text.txt"
    text.write_text("a b\n")
    (up / "sub").mkdir(parents=True)
    (up / "sub" / "x.txt").write_text("x\n")
    upstream = Completion(up, "make-up", {"n": 1}, inputs={"text": text})
    upstream.mark_done()
    stamp = input_stamp(up / "sub" / "x.txt")
    assert stamp.startswith("step:") and input_stamp(up) == stamp  # the marker claims everything below up/

    def downstream():
        return Completion(down, "make-down", {"n": 2}, inputs={"up": up / "sub" / "x.txt"})

    assert not downstream().is_done()
    downstream().mark_done()
    assert downstream().is_done()
    Completion(up, "make-up", {"n": 1}, inputs={"text": text}).mark_done()  # upstream ran again: new stamp
    assert not downstream().is_done()
    assert "inputs of 'make-down' changed since it ran (up)" in caplog.text
    assert not (down / ".done.make-down.json").exists()

    assert Completion(up, "make-up", {"n": 1}, inputs={"text": text}).is_done()
    text.write_text("a c\n")  # a plain file: its content counts
    assert not Completion(up, "make-up", {"n": 1}, inputs={"text": text}).is_done()


def test_partial_work_of_other_options_is_cleared(tmp_path, caplog):
    """resume_or_clear keeps a folder's partial work only under the key it was made with."""
    import logging

    from asrhybrid.outputs import Completion, resume_or_clear

    caplog.set_level(logging.INFO)
    work = tmp_path / "chunks"
    work.mkdir()
    (work / "leftover").write_text("from nobody knows what run")
    key = Completion(tmp_path, "resumable", {"opt": 1}).resume_key()
    resume_or_clear(work, key)
    assert not (work / "leftover").exists()  # no record: not vouched for
    (work / "chunk-0").write_text("made under key")
    resume_or_clear(work, Completion(tmp_path, "resumable", {"opt": 1}).resume_key())
    assert (work / "chunk-0").exists()  # same options and inputs: resumed
    resume_or_clear(work, Completion(tmp_path, "resumable", {"opt": 2}).resume_key())
    assert not (work / "chunk-0").exists() and "starting over" in caplog.text
    (work / "chunk-0").write_text("made under opt 2")
    resume_or_clear(work, None)  # forced: always over
    assert not (work / "chunk-0").exists()
    assert Completion(tmp_path, "r", {"opt": 1, "iterations": 3}).resume_key("iterations") == Completion(
        tmp_path, "r", {"opt": 1, "iterations": 8}
    ).resume_key("iterations")
    forced = Completion(tmp_path, "r", {"opt": 1})
    forced.is_done(force=True)
    assert forced.resume_key() is None


def test_stale_temporaries_of_a_live_run_are_kept(tmp_path):
    """Two runs in one directory: temporaries of a process still alive are not deleted, a dead one's are."""
    import subprocess

    from asrhybrid.outputs import TMP_PREFIX, remove_stale_temporaries

    alive = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        (tmp_path / f"{TMP_PREFIX}{alive.pid}.a.txt").write_text("live")
        (tmp_path / f"{TMP_PREFIX}{dead.pid}.b.txt").write_text("dead")
        remove_stale_temporaries(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{TMP_PREFIX}{alive.pid}.a.txt"]
    finally:
        alive.kill()
        alive.wait()


def test_a_second_run_in_the_same_workdir_stops_at_once(tmp_path):
    import sys

    import pytest

    from asrhybrid.errors import AsrHybridError
    from asrhybrid.recipe.runner import workdir_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from asrhybrid.recipe.runner import workdir_lock\n"
                f"with workdir_lock(Path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(30)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AsrHybridError, match=f"in use by another run \\(pid {holder.pid}\\)"):
            with workdir_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock(tmp_path):  # the lock went with the process
        pass


def test_exit_codes_logs_and_layers(tmp_path):
    """Exit 0 / 1 (a message, no traceback) / 130 (Ctrl-C); a verb's log starts with its command line;
    the runner does not import the command line (no cycle: cli -> runner -> verbs)."""
    import sys

    bad = subprocess.run(
        asrhybrid_cmd()
        + [
            "prepare-lang",
            str(tmp_path / "no-dict"),
            str(tmp_path / "lang"),
            "--oov",
            "<UNK>",
            "--log-file",
            str(tmp_path / "log" / "lang.log"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no-dict" in bad.stderr
    first = (tmp_path / "log" / "lang.log").read_text().splitlines()[0]
    assert first.endswith(
        f"asrhybrid prepare-lang {tmp_path / 'no-dict'} {tmp_path / 'lang'} --oov '<UNK>' "
        f"--log-file {tmp_path / 'log' / 'lang.log'}"
    )

    # SIGINT back to its default in the child: a shell's background job (CI started with &) ignores it, and
    # Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen(
        asrhybrid_cmd() + ["synth-corpus", str(tmp_path / "s"), "--opt", "train_hours=0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "s").rglob("*.wav"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; re-run the same command to resume" in err

    probe = "import sys, asrhybrid.recipe.runner; print(any(m == 'asrhybrid.cli' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
