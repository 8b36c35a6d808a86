"""``asrhybrid <verb>``: the command line. The verbs live in asrhybrid.verbs; ``run-recipe`` (what
``make`` calls) chains them through the recipe runner.

Exit codes: 0 done, 1 an error (its message, no traceback), 130 interrupted (re-run to resume).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from asrhybrid.errors import AsrHybridError
from asrhybrid.jobs import ENGINES
from asrhybrid.logs import setup_logging
from asrhybrid.recipe.runner import run_recipe
from asrhybrid.verbs import add_verbs, run_verb
from asrhybrid.verbs.common import add_verb

log = logging.getLogger("asrhybrid")


def cmd_run_recipe(args: argparse.Namespace) -> None:
    run_recipe(
        args.recipe,
        args.workdir,
        args.stage,
        args.stop_stage,
        args.corpus_dir,
        args.force,
        args.fold.split(",") if args.fold else None,
        {"engine": args.engine, "address": args.address, "workers": args.workers, "nj": args.nj},
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrhybrid", description="Kaldi-style speech recognition recipes")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(sub, "run-recipe", "run stages N..M of a recipe (what `make` calls)")
    p.add_argument("recipe", type=Path, help="recipes/<corpus> (its config.yaml)")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--stop-stage", type=int, default=100)
    p.add_argument("--corpus-dir", type=Path, help="where the corpus is (generated there for synth)")
    p.add_argument("--force", action="store_true", help="redo stages that finished before")
    p.add_argument("--fold", help="NAME[,NAME...]: in a recipe with folds, only these (default: every fold)")
    p.add_argument("--engine", choices=ENGINES, help="where parallel stages' jobs run (default: the recipe's jobs:)")
    p.add_argument("--address", help="dask: the scheduler's address (tcp://host:8786)")
    p.add_argument("--workers", type=int, help="local processes or Dask LocalCluster workers")
    p.add_argument("--nj", type=int, help="jobs of every parallel stage (default: the recipe's)")
    p.set_defaults(func=cmd_run_recipe, log_file=None)
    add_verbs(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # bad arguments: argparse's message and exit 2
    setup_logging()
    try:
        if args.verb == "run-recipe":
            log.info("asrhybrid %s", shlex.join(argv))
            args.func(args)
        else:
            run_verb(argv)
    except AsrHybridError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; re-run the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
