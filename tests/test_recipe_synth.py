"""`make` with no arguments: the default synth recipe, generated and featurised offline."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_make
from lhotse import load_manifest


@pytest.mark.slow
def test_default_recipe_runs_offline(tmp_path):
    work = tmp_path / "synth"
    result = run_make(f"workdir={work}", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    cuts = {p: load_manifest(work / "data" / "fbank" / f"synth_cuts_{p}.jsonl.gz") for p in ("train", "dev", "test")}
    assert sum(c.duration for c in cuts["train"]) >= 3600
    speakers = {p: {c.supervisions[0].speaker for c in cs} for p, cs in cuts.items()}
    assert len(set().union(*speakers.values())) >= 20
    assert speakers["train"].isdisjoint(speakers["dev"] | speakers["test"])
    assert any(c.supervisions[0].custom.get("noise") for c in cuts["train"])
    assert cuts["dev"][0].load_features().shape[1] == 80
    # Stages 2-5 ran too: the flat start converged, and its alignments of the held-out test
    # speakers meet the quality measured when its defaults were chosen (docs/alignment.md).
    import json

    flat = json.loads((work / "exp" / "mono_flat" / "flat_start.json").read_text())["iterations"]
    assert flat[-1]["changed_phone_frames"] < 0.02
    assert json.loads((work / "exp" / "tree" / "tree.json").read_text())["leaves"] == 800
    out = work / "exp" / "mono_flat" / "align_test"
    test_cuts = str(work / "data" / "fbank" / "synth_cuts_test.jsonl.gz")
    cli = [sys.executable, "-m", "asrhybrid.cli"]
    for verb in (
        ["align", test_cuts, str(work / "data" / "lang"), str(work / "exp" / "mono_flat"), str(out)],
        ["align-quality", test_cuts, str(out)],
    ):
        done = subprocess.run(cli + verb, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    words = json.loads((out / "quality.json").read_text())["word_boundaries"]
    assert words["boundaries"] > 1000
    # The median and the share within 20 ms are stable across seeds (9.2-9.6 ms, 72-76%); the mean is not
    # (20-42 ms with the same code and another seed): a few noisy test utterances (SNR 5-9 dB) come out
    # shifted by 0.5-1 s in some runs and not in others. The mean bound catches a wholesale failure only.
    assert words["median_ms"] < 12 and words["within_20ms"] > 0.70 and words["mean_ms"] < 50
