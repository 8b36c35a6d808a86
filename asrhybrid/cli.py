"""``asrhybrid <verb>``: one verb per stage, explicit inputs and outputs (Kaldi's one tool, one job).

The recipe runner (``asrhybrid run-recipe``, i.e. ``make``) only chains these
verbs and logs each command line, so any stage can be re-run by hand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asrhybrid.config import parse_options
from asrhybrid.errors import AsrHybridError
from asrhybrid.recipe.logs import log_to_file, setup_logging

log = logging.getLogger("asrhybrid")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-file", type=Path, help="also write the log here (the recipe runner sets exp/.../log/)")
    p.add_argument("--force", action="store_true", help="redo the work even if it finished before")


def cmd_synth_corpus(args: argparse.Namespace) -> None:
    from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus

    options = parse_options(args.opt)
    if "snr_db" in options:
        options["snr_db"] = tuple(options["snr_db"])
    try:
        cfg = SynthConfig(**options)
    except TypeError as e:
        from asrhybrid.errors import ConfigError

        raise ConfigError(f"synth-corpus: bad option: {e}") from None
    generate_corpus(args.out_dir, cfg, force=args.force)


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from asrhybrid.data.prepare import prepare_data

    prepare_data(
        corpus=args.corpus,
        preparer=args.preparer or args.corpus,
        corpus_dir=args.corpus_dir,
        manifest_dir=args.manifest_dir,
        sample_rate=args.sample_rate,
        options=parse_options(args.opt),
        resample=not args.no_resample,
        verify_audio=not args.no_verify_audio,
        force=args.force,
    )


def cmd_compute_fbank(args: argparse.Namespace) -> None:
    from asrhybrid.data.prepare import manifest_parts
    from asrhybrid.errors import ConfigError, DataError
    from asrhybrid.features.compute import compute_fbank
    from asrhybrid.features.fbank import KaldiFbankConfig

    try:
        config = KaldiFbankConfig(**parse_options(args.opt))
    except TypeError as e:
        raise ConfigError(f"compute-fbank: bad fbank option: {e}") from None
    parts = args.parts or manifest_parts(args.manifest_dir, args.corpus)
    if not parts:
        raise DataError([f"no {args.corpus}_supervisions_*.jsonl.gz in {args.manifest_dir}: run prepare-data first"])
    compute_fbank(
        args.manifest_dir, args.fbank_dir, args.corpus, parts, config,
        num_jobs=args.num_jobs, chunk_size=args.chunk_size, force=args.force,
    )


def cmd_download(args: argparse.Namespace) -> None:
    from asrhybrid.data.download import download_corpus

    log.info("%s is in %s", args.corpus, download_corpus(args.corpus, args.target_dir, force=args.force))


def cmd_run_recipe(args: argparse.Namespace) -> None:
    from asrhybrid.recipe.runner import run_recipe

    run_recipe(args.recipe, args.workdir, args.stage, args.stop_stage, args.corpus_dir, args.force)


def cmd_check_install(args: argparse.Namespace) -> None:
    from asrhybrid.recipe.install import check_install

    check_install()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asrhybrid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("run-recipe", help="run stages N..M of a recipe (what `make` calls)")
    p.add_argument("recipe", type=Path, help="recipes/<corpus> (its config.yaml)")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--stop-stage", type=int, default=100)
    p.add_argument("--corpus-dir", type=Path, help="where the corpus is (generated there for synth)")
    p.add_argument("--force", action="store_true", help="redo stages that finished before")
    p.set_defaults(func=cmd_run_recipe, log_file=None)

    p = sub.add_parser("synth-corpus", help="generate the synthetic multi-speaker corpus")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="SynthConfig field (seed, train_hours, ...)")
    _add_common(p)
    p.set_defaults(func=cmd_synth_corpus)

    p = sub.add_parser("download", help="download a corpus through Lhotse (needs a network)")
    p.add_argument("corpus", help="yesno or mini_librispeech")
    p.add_argument("target_dir", type=Path)
    _add_common(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("prepare-data", help="stage 0: Lhotse manifests from a corpus directory")
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("manifest_dir", type=Path)
    p.add_argument("--corpus", required=True, help="name used in the manifest file names")
    p.add_argument("--preparer", help="yesno, fsdd, synth, kaldi, librispeech (default: --corpus)")
    p.add_argument("--sample-rate", type=int, required=True)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="preparer option, e.g. split=upstream")
    p.add_argument("--no-resample", action="store_true", help="refuse audio at another sample rate")
    p.add_argument("--no-verify-audio", action="store_true", help="read headers only, do not decode every file")
    _add_common(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("compute-fbank", help="stage 1: Kaldi fbank features and CMVN stats")
    p.add_argument("manifest_dir", type=Path)
    p.add_argument("fbank_dir", type=Path)
    p.add_argument("--corpus", required=True)
    p.add_argument("--parts", nargs="+", help="default: every part in manifest_dir")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="fbank option, e.g. num_mel_bins=40")
    p.add_argument("--num-jobs", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=500, help="cuts per resumable chunk")
    _add_common(p)
    p.set_defaults(func=cmd_compute_fbank)

    p = sub.add_parser("check-install", help="import every dependency in a fresh process, print versions")
    p.set_defaults(func=cmd_check_install, log_file=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        with log_to_file(args.log_file):
            log.debug("asrhybrid %s", " ".join(argv if argv is not None else sys.argv[1:]))
            args.func(args)
    except AsrHybridError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; re-run the same command to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
