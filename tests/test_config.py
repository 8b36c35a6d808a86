"""Recipe configs and --opt values: typos are errors naming the nearest valid key, words stay words."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrhybrid.config import load_recipe, parse_options
from asrhybrid.errors import ConfigError
from conftest import REPO


@pytest.mark.parametrize("recipe", sorted(p.parent.name for p in (REPO / "recipes").glob("*/config.yaml")))
def test_every_shipped_recipe_loads(recipe):
    assert load_recipe(REPO / "recipes" / recipe).corpus


@pytest.mark.parametrize("section, text, where, near", [
    ("tree", "tree: {min_cnt: 5}", "tree.min_cnt", "min_count"),
    ("align", "align: {iteration: 3}", "align.iteration", "iterations"),
    ("lm", "lm: {small: {ordr: 2}}", "lm.small.ordr", "order"),
    ("features", "features: {fbank: {num_mel_bin: 40}}", "features.fbank.num_mel_bin", "num_mel_bins"),
    ("top", "tokenz: {vocab_size: 10}", "tokenz", "tokens"),
    ("e2e tokens", "e2e: {ctc: {tokens: {model_tpye: char}}}", "e2e.ctc.tokens.model_tpye", "model_type"),
    ("e2e hlg", "e2e: {decode: {hlg: {serch_beam: 10}}}", "e2e.decode.hlg.serch_beam", "search_beam"),
    ("adapt", "decode: {adapt: {iteration: 2}}", "decode.adapt.iteration", "iterations"),
])
def test_unknown_nested_keys_name_the_nearest_valid_one(tmp_path: Path, section, text, where, near):
    (tmp_path / "config.yaml").write_text("corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n" + text + "\n")
    with pytest.raises(ConfigError, match=f"unknown key '{where}'; did you mean '{near}'"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("text, message", [("decode: {adapt: 3}", "is a mapping"),
                                           ("decode: {adapt: {iterations: 0}}", "1 or more")])
def test_bad_adaptation_settings_are_refused(tmp_path: Path, text, message):
    (tmp_path / "config.yaml").write_text("corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path)


def test_options_keep_yes_and_no_as_words():
    assert parse_options(["split=no", "x=yes", "n=3", "flag=true", "speakers=[theo]"]) == {
        "split": "no", "x": "yes", "n": 3, "flag": True, "speakers": ["theo"]}


def test_an_end_to_end_system_can_ask_for_its_own_token_model(tmp_path: Path):
    from asrhybrid.recipe.runner import RecipeRun, token_dir, token_specs

    (tmp_path / "config.yaml").write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\ntokens: {model_type: bpe, vocab_size: 50}\n"
        "e2e: {systems: [rnnt, ctc], ctc: {tokens: {model_type: char, vocab_size: 30}}}\n")
    run = RecipeRun(load_recipe(tmp_path), tmp_path / "work", None, False)
    assert token_specs(run) == [{"model_type": "bpe", "vocab_size": 50}, {"model_type": "char", "vocab_size": 30}]
    assert token_dir(run).name == "lang_bpe_50"
    assert token_dir(run, {"model_type": "char", "vocab_size": 30}).name == "lang_char_30"
