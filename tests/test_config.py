"""Recipe configs and --opt values: typos are errors naming the nearest valid key, words stay words."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from asrhybrid.errors import ConfigError
from asrhybrid.options import parse_options
from asrhybrid.recipe.config import load_recipe
from asrhybrid.recipe.runner import RecipeRun, stage_e2e, stage_e2e_decode


@pytest.mark.parametrize("recipe", sorted(p.parent.name for p in (REPO / "recipes").glob("*/config.yaml")))
def test_every_shipped_recipe_loads(recipe):
    assert load_recipe(REPO / "recipes" / recipe).corpus


@pytest.mark.parametrize(
    "section, text, where, near",
    [
        ("tree", "tree: {min_cnt: 5}", "tree.min_cnt", "min_count"),
        ("align", "align: {iteration: 3}", "align.iteration", "iterations"),
        ("lm", "lm: {small: {ordr: 2}}", "lm.small.ordr", "order"),
        ("features", "features: {fbank: {num_mel_bin: 40}}", "features.fbank.num_mel_bin", "num_mel_bins"),
        ("top", "tokenz: {vocab_size: 10}", "tokenz", "tokens"),
        ("e2e tokens", "e2e: {ctc: {tokens: {model_tpye: char}}}", "e2e.ctc.tokens.model_tpye", "model_type"),
        ("e2e hlg", "e2e: {decode: {hlg: {serch_beam: 10}}}", "e2e.decode.hlg.serch_beam", "search_beam"),
        ("adapt", "decode: {adapt: {iteration: 2}}", "decode.adapt.iteration", "iterations"),
        ("jobs", "jobs: {engin: dask}", "jobs.engin", "engine"),
        ("chain tree", "am: {lstmp_chain: {tree: {num_leafs: 9}}}", "am.lstmp_chain.tree.num_leafs", "num_leaves"),
    ],
)
def test_unknown_nested_keys_name_the_nearest_valid_one(tmp_path: Path, section, text, where, near):
    (tmp_path / "config.yaml").write_text("corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n" + text + "\n")
    with pytest.raises(ConfigError, match=f"unknown key '{where}'; did you mean '{near}'"):
        load_recipe(tmp_path)


@pytest.mark.parametrize(
    "text, message", [("decode: {adapt: 3}", "is a mapping"), ("decode: {adapt: {iterations: 0}}", "1 or more")]
)
def test_bad_adaptation_settings_are_refused(tmp_path: Path, text, message):
    (tmp_path / "config.yaml").write_text("corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("jobs: {engine: sge}", "engine 'sge' is not one of local, dask, slurm"),
        ("jobs: {nj: 0}", "'jobs.nj' is a number of jobs"),
        ("jobs: {engine: slurm, slurm: {partiton: cpu}}", "jobs.slurm: unknown"),
    ],
)
def test_bad_job_settings_are_refused(tmp_path: Path, text, message):
    (tmp_path / "config.yaml").write_text("corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path)


def test_the_recipes_jobs_reach_every_parallel_verb_under_the_command_lines(tmp_path: Path):
    """`jobs:` in the recipe and `make engine= nj=` on the command line become the verbs' job options, which the
    verbs' own parsers accept."""
    from asrhybrid.cli import build_parser

    (tmp_path / "config.yaml").write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\n"
        "jobs: {engine: slurm, nj: 8, max_retries: 1, slurm: {partition: cpu, time_min: 30}}\n"
    )
    config = load_recipe(tmp_path)
    run = RecipeRun(config, tmp_path / "work", None, False)
    args = run.job_args(2)
    assert args == [
        "--nj",
        "8",
        "--engine",
        "slurm",
        "--max-retries",
        "1",
        "--slurm",
        "partition=cpu",
        "--slurm",
        "time_min=30",
    ]
    parsed = build_parser().parse_args(["decode", "g", "s", "o", *args])
    assert (parsed.nj, parsed.engine, parsed.max_retries, parsed.slurm) == (
        8,
        "slurm",
        1,
        ["partition=cpu", "time_min=30"],
    )
    over = RecipeRun(config, tmp_path / "work", None, False, {"engine": "dask", "address": "tcp://h:8786", "nj": None})
    assert over.job_args(2)[:6] == ["--nj", "8", "--engine", "dask", "--max-retries", "1"]
    assert "--address" in over.job_args(2)
    plain = RecipeRun(load_recipe(REPO / "recipes" / "yesno"), tmp_path / "w", None, False)
    assert plain.job_args(2) == ["--nj", "2"]


def test_training_over_nodes_names_its_rendezvous():
    from asrhybrid.recipe.runner import torchrun_argv

    assert "--standalone" in torchrun_argv(["train-am"], 2, 1, None, "x")
    argv = torchrun_argv(["train-am", "a"], 4, 2, "head:29400", "train-am-lstmp")
    assert ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29400", "--rdzv-id=train-am-lstmp"] == argv[3:7]
    assert argv[7:] == ["--nproc-per-node=4", "-m", "asrhybrid", "train-am", "a"]
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        torchrun_argv(["train-am"], 1, 2, None, "x")


def test_options_keep_yes_and_no_as_words():
    assert parse_options(["split=no", "x=yes", "n=3", "flag=true", "speakers=[theo]"]) == {
        "split": "no",
        "x": "yes",
        "n": 3,
        "flag": True,
        "speakers": ["theo"],
    }


def test_an_end_to_end_system_can_ask_for_its_own_token_model(tmp_path: Path):
    from asrhybrid.recipe.runner import RecipeRun, token_dir, token_specs

    (tmp_path / "config.yaml").write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\ntokens: {model_type: bpe, vocab_size: 50}\n"
        "e2e: {systems: [rnnt, ctc], ctc: {tokens: {model_type: char, vocab_size: 30}}}\n"
    )
    run = RecipeRun(load_recipe(tmp_path), tmp_path / "work", None, False)
    assert token_specs(run) == [{"model_type": "bpe", "vocab_size": 50}, {"model_type": "char", "vocab_size": 30}]
    assert token_dir(run).name == "lang_bpe_50"
    assert token_dir(run, {"model_type": "char", "vocab_size": 30}).name == "lang_char_30"


class _Recorded(RecipeRun):
    """A recipe run that records the verbs its stages would run instead of running them."""

    def run_verb(self, stage, verb, args):
        self.calls.append((stage, verb, args))

    def run_verb_workers(self, stage, verb, args, nproc, nnodes=1, rdzv_endpoint=None):
        self.calls.append((stage, verb, args))


def _recorded_run(tmp_path: Path, e2e: str) -> _Recorded:
    (tmp_path / "config.yaml").write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\ne2e: " + e2e + "\n"
    )
    run = _Recorded(load_recipe(tmp_path), tmp_path / "work", None, False)
    run.calls = []
    run.fbank_dir.mkdir(parents=True)
    run.manifest_dir.mkdir(parents=True)
    for part in ("train", "test"):
        (run.fbank_dir / f"yesno_cuts_{part}.jsonl.gz").touch()
        (run.manifest_dir / f"yesno_supervisions_{part}.jsonl.gz").touch()
    return run


def test_named_end_to_end_systems_train_their_kind_in_their_own_exp_dir(tmp_path: Path):
    """LAS with and without its CTC head side by side: a named system says its kind; searches can be limited to
    some systems and named, so two LAS searches that differ in ctc_weight get two decode dirs."""
    run = _recorded_run(
        tmp_path,
        "{systems: [las, las_paper], common: {epochs: 3}, "
        "las_paper: {system: las, model: {ctc_weight: 0.0}}, "
        "decode: {searches: [{method: beam}, {method: flashlight, lm: large}, "
        "{method: beam, ctc_weight: 0.0, name: attention, systems: [las]}]}}",
    )
    stage_e2e(run)
    trained = {Path(args[2]).name: args for _, verb, args in run.calls if verb == "train-e2e"}
    assert sorted(trained) == ["las", "las_paper"]
    assert trained["las_paper"][trained["las_paper"].index("--system") + 1] == "las"
    assert "ctc_weight=0.0" in trained["las_paper"] and "ctc_weight=0.0" not in trained["las"]
    assert "system=las" not in trained["las_paper"]
    run.calls.clear()
    stage_e2e_decode(run)
    decoded = sorted(
        f"{Path(args[0]).name}/{Path(args[2]).name}" for _, verb, args in run.calls if verb == "decode-e2e"
    )
    # flashlight is a CTC search: neither LAS decodes with it; the attention-only search is las's alone
    assert decoded == ["las/decode_test_nolm_attention", "las/decode_test_nolm_beam", "las_paper/decode_test_nolm_beam"]


@pytest.mark.parametrize(
    "e2e, message",
    [
        ("{systems: [joint]}", "'e2e.joint' is not one of ctc, rnnt, las"),
        ("{systems: [joint], joint: {system: lass}}", "'e2e.joint' is not one of"),
        ("{systems: [las], decode: {searches: [{method: beam, systems: [ctc]}]}}", "names the system 'ctc'"),
        ("{systems: [las], las: {system: ctc}}", "unknown key 'e2e.las.system'"),
        ("{systems: [decode]}", "is a key of the e2e section"),
        ("{systems: [las], joint: {system: las}}", "unknown key 'e2e.joint'"),
    ],
)
def test_bad_named_systems_are_refused(tmp_path: Path, e2e, message):
    (tmp_path / "config.yaml").write_text(
        "corpus: yesno\nsample_rate: 8000\ndata: {preparer: yesno}\ne2e: " + e2e + "\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_recipe(tmp_path)


def test_chain_options_enter_a_training_runs_key_only_when_given():
    """stage 6's `chain:` options came after runs that are done: a cross-entropy system's completion key has no
    `chain` (its runs stay done), a chain system's has its options."""
    from asrhybrid.nnet.train import TrainConfig
    from asrhybrid.verbs.common import completion_options

    assert "chain" not in completion_options(TrainConfig(system="lstmp"))
    keyed = completion_options(TrainConfig(system="lstmp_chain", chain={"leaky_hmm_coefficient": 0.05}))
    assert keyed["chain"] == {"leaky_hmm_coefficient": 0.05} and keyed["system"] == "lstmp_chain"


def test_weight_decay_enters_a_runs_key_only_when_given_and_decays_the_weights():
    """`weight_decay` came after runs that are done: it keys a run (stage 6's and stage 9's) only when set; set,
    a step with no gradient shrinks every weight by lr x weight_decay (AdamW's decoupled decay)."""
    import torch

    from asrhybrid.e2e.train import E2EConfig
    from asrhybrid.nnet.train import TrainConfig
    from asrhybrid.nnet.trainer import _optimizer
    from asrhybrid.verbs.common import completion_options

    assert "weight_decay" not in completion_options(TrainConfig(system="lstmp"))
    assert "weight_decay" not in completion_options(E2EConfig(system="ctc"))
    assert completion_options(TrainConfig(system="lstmp", weight_decay=0.1))["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match="weight_decay"):
        TrainConfig(system="lstmp", weight_decay=-1.0)
    layer = torch.nn.Linear(3, 2)
    before = layer.weight.detach().clone()
    optimizer = _optimizer(layer, TrainConfig(system="lstmp", lr=0.01, weight_decay=0.5))
    for p in layer.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(layer.weight, before * (1 - 0.01 * 0.5))
