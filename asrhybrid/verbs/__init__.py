"""The verb table: one ``asrhybrid <verb>`` per step, explicit inputs and outputs (Kaldi's one tool, one job).

Both the command line (asrhybrid.cli) and the recipe runner run verbs through
:func:`run_verb`, which logs the full command line first (to the terminal and
to the verb's ``--log-file``), so any step can be re-run by hand. A verb
decides paths, skipping and forcing (completion markers); the library
functions it calls compute.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex

from asrhybrid.errors import ConfigError
from asrhybrid.install import check_install
from asrhybrid.logs import log_to_file
from asrhybrid.verbs.align import add_align_verbs
from asrhybrid.verbs.am import add_am_verbs
from asrhybrid.verbs.common import add_verb
from asrhybrid.verbs.data import add_data_verbs
from asrhybrid.verbs.decode import add_decode_verbs
from asrhybrid.verbs.e2e import add_e2e_verbs
from asrhybrid.verbs.lang import add_lang_verbs

log = logging.getLogger("asrhybrid")


def cmd_check_install(args: argparse.Namespace) -> None:
    check_install()


def add_verbs(sub) -> None:
    """Every verb's parser on ``sub`` (argparse subparsers), in the pipeline's order."""
    add_data_verbs(sub)  # stages 0-1
    add_lang_verbs(sub)  # 2-3
    add_align_verbs(sub)  # 4-5, alignment generation
    add_am_verbs(sub)  # 6
    add_decode_verbs(sub)  # 7-8
    add_e2e_verbs(sub)  # 9-10
    p = add_verb(
        sub, "check-install", "import every dependency in a fresh process and print the versions (writes nothing)"
    )
    p.set_defaults(func=cmd_check_install, log_file=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrhybrid", description=__doc__.splitlines()[0])
    add_verbs(parser.add_subparsers(dest="verb", required=True, metavar="VERB"))
    return parser


def run_verb(argv: list[str]) -> None:
    """Run ``asrhybrid ARGV`` in this process: its command line first in the log (and its --log-file).

    Errors propagate (AsrHybridError, KeyboardInterrupt); bad arguments are a ConfigError, not an exit.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise ConfigError(f"asrhybrid {shlex.join(argv)}: bad arguments (see the message above)") from None
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun's other workers: warnings only, the first one logs
        logging.getLogger().setLevel(logging.WARNING)
    with log_to_file(args.log_file):
        log.info("asrhybrid %s", shlex.join(argv))
        args.func(args)
