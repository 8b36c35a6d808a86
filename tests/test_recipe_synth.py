"""`make` with no arguments: the default synth recipe, generated and featurised offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lhotse import load_manifest

from conftest import REPO


@pytest.mark.slow
def test_default_recipe_runs_offline(tmp_path):
    venv = Path(sys.executable).parent.parent
    work = tmp_path / "synth"
    result = subprocess.run(["make", "-C", str(REPO), f"workdir={work}", f"VENV={venv}"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    cuts = {p: load_manifest(work / "data" / "fbank" / f"synth_cuts_{p}.jsonl.gz") for p in ("train", "dev", "test")}
    assert sum(c.duration for c in cuts["train"]) >= 3600
    speakers = {p: {c.supervisions[0].speaker for c in cs} for p, cs in cuts.items()}
    assert len(set().union(*speakers.values())) >= 20
    assert speakers["train"].isdisjoint(speakers["dev"] | speakers["test"])
    assert any(c.supervisions[0].custom.get("noise") for c in cuts["train"])
    assert cuts["dev"][0].load_features().shape[1] == 80
