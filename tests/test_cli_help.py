"""The first commands a newcomer types: `asrhybrid --help`, each verb's `--help`, `make help`."""

from __future__ import annotations

import re
import subprocess

from conftest import REPO, asrhybrid_cmd

from asrhybrid.cli import build_parser


def verbs() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return sorted(sub.choices)


def test_top_level_help_lists_every_verb():
    result = subprocess.run(asrhybrid_cmd() + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    names = verbs()
    assert len(names) > 20 and {"run-recipe", "results", "decode", "train-am"} <= set(names)
    assert all(name in result.stdout for name in names)
    assert "%WER" in result.stdout and "%%" not in result.stdout  # the results verb's help, printed as written


def test_every_verb_prints_its_help_and_exits_0():
    """In-process (one interpreter for ~40 verbs): argparse prints the help and raises SystemExit(0)."""
    parser = build_parser()
    for name in verbs():
        try:
            parser.parse_args([name, "--help"])
        except SystemExit as e:
            assert e.code == 0, name
        else:
            raise AssertionError(f"{name} --help did not exit")


def test_make_help_lists_targets_and_variables():
    result = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for target in ("setup", "test", "test-all", "bench", "help"):
        assert re.search(rf"^\s+make {target}\b", out, re.M), target
    for variable in ("corpus", "stage", "stop_stage", "workdir", "corpus_dir", "force"):
        assert re.search(rf"\b{variable}=", out), variable
    assert "?=" not in out  # not a line of the Makefile itself
    assert "yesno" in out and "synth" in out  # the recipes one can name
