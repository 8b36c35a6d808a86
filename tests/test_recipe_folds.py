"""Recipes in folds (fsdd's leave-one-speaker-out): each fold's config, its own workdir, RESULTS.md over folds."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from lhotse import load_manifest

from asrhybrid.errors import ConfigError
from asrhybrid.recipe.config import load_recipe
from asrhybrid.recipe.runner import run_recipe
from asrhybrid.score.grid import score_hypotheses
from asrhybrid.score.results import fold_workdir, folds_summary, write_folds_results


def test_fsdd_folds_leave_each_speaker_out_once():
    config = load_recipe(REPO / "recipes" / "fsdd")
    recipe_speakers = list(config.data["options"]["test_speakers"])
    assert config.fold_option == "test_speakers"
    assert sorted(config.fold_names()) == ["jackson", "nicolas", "theo", "yweweler"]
    for name in config.fold_names():
        fold = config.with_fold(name)
        assert fold.data["options"]["test_speakers"] == [name]  # the recipe's list option stays a list
        assert fold.data["options"]["dev_takes"] == config.data["options"]["dev_takes"]
        assert fold.folds == {}
    assert config.data["options"]["test_speakers"] == recipe_speakers  # the recipe itself is not changed
    with pytest.raises(ConfigError, match="no fold 'george'.*jackson"):
        config.with_fold("george")


@pytest.mark.parametrize("folds", ["[a, b]", "{test_speakers: []}", "{a: [x], b: [y]}", "{test_speakers: [x, x]}"])
def test_bad_folds_are_refused_naming_the_recipe(tmp_path, folds):
    path = tmp_path / "config.yaml"
    path.write_text(f"corpus: yesno\nsample_rate: 8000\ndata: {{preparer: yesno}}\nfolds: {folds}\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_recipe(path)


def test_recipe_with_folds_runs_each_fold_in_its_own_workdir(yesno_dir, tmp_path):
    """Stage 0 of yesno in two folds over num_train: each fold's manifests hold its own split."""
    recipe = tmp_path / "config.yaml"
    recipe.write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno, options: {num_train: 30}}\n"
        "folds: {num_train: [20, 40]}\n"
    )
    run_recipe(recipe, tmp_path / "work", stage=0, stop_stage=0, corpus_dir=yesno_dir)
    for num_train in (20, 40):
        manifests = fold_workdir(tmp_path / "work", str(num_train)) / "data" / "manifests"
        assert len(load_manifest(manifests / "yesno_supervisions_train.jsonl.gz")) == num_train
        assert len(load_manifest(manifests / "yesno_supervisions_test.jsonl.gz")) == 60 - num_train
    with pytest.raises(ConfigError, match="no fold '30'"):
        run_recipe(recipe, tmp_path / "work", stage=0, stop_stage=0, corpus_dir=yesno_dir, folds=["30"])


def _scored(workdir, system, part, refs, hyps):
    decode_dir = workdir / "exp" / system / f"decode_{part}_nolm_greedy"
    decode_dir.mkdir(parents=True)
    (decode_dir / "decode.json").write_text(json.dumps({"search": {"method": "greedy"}}))
    (decode_dir / "hyp.txt").write_text("".join(f"{u} {h}\n" for u, h in hyps.items()))
    return score_hypotheses(decode_dir, refs)


def test_results_over_folds_give_each_fold_their_mean_worst_and_pooled_errors(tmp_path):
    refs = {"u1": "ONE TWO THREE", "u2": "FOUR FIVE"}
    a = _scored(fold_workdir(tmp_path, "a"), "ctc", "test", refs, {"u1": "ONE TWO THREE", "u2": "FOUR SIX"})
    b = _scored(fold_workdir(tmp_path, "b"), "ctc", "test", refs, {"u1": "ONE THREE", "u2": "FOUR FIVE FIVE"})
    _scored(fold_workdir(tmp_path, "a"), "las", "test", refs, {"u1": "ONE", "u2": "FOUR FIVE"})  # fold b lacks las
    summary = folds_summary(tmp_path, ["a", "b"])
    ctc = next(e for e in summary["lines"] if e["system"] == "ctc")
    assert ctc["folds"] == {"a": a["wer"], "b": b["wer"]} == {"a": 20.0, "b": 40.0}
    assert ctc["mean"] == 30.0 and ctc["worst"] == 40.0 and ctc["worst_fold"] == "b"
    assert ctc["pooled"].startswith("%WER 30.00 [ 3 / 10, 1 ins, 1 del, 1 sub ]")
    las = next(e for e in summary["lines"] if e["system"] == "las")
    assert las["folds"] == {"a": 40.0} and "mean" not in las  # no mean over a fold that is missing
    path = write_folds_results(tmp_path, "toy", ["a", "b", "c"], "test_speakers")
    text = path.read_text()
    assert "| ctc | nolm | greedy | 20.00 | 40.00 | - | - | - |" in text  # fold c not run: no mean
    assert "Not scored yet: c" in text
    assert json.loads((tmp_path / "results_folds.json").read_text())["complete"] == ["a", "b"]
