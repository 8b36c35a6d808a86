"""Stages 0-1 verbs: the corpus (synthesised, downloaded or prepared into Lhotse manifests) and its fbank features."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, replace
from pathlib import Path

from asrhybrid.data.download import download_corpus
from asrhybrid.data.manifests import manifest_paths
from asrhybrid.data.prepare import manifest_parts, prepare_data
from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.features.compute import compute_fbank
from asrhybrid.features.fbank import KaldiFbankConfig
from asrhybrid.features.layout import FeatureSet
from asrhybrid.options import parse_options
from asrhybrid.outputs import run_once
from asrhybrid.verbs.common import add_common, add_jobs, add_verb, jobs_config

log = logging.getLogger("asrhybrid")


def cmd_synth_corpus(args: argparse.Namespace) -> None:

    options = parse_options(args.opt)
    if "snr_db" in options:
        options["snr_db"] = tuple(options["snr_db"])
    try:
        cfg = SynthConfig(**options)
    except TypeError as e:
        raise ConfigError(f"synth-corpus: bad option: {e}") from None
    run_once(
        args.out_dir,
        "synth-corpus",
        asdict(cfg),
        args.force,
        lambda done: generate_corpus(args.out_dir, cfg, resume_key=done.resume_key(), engine=jobs_config(args)),
    )


def cmd_prepare_data(args: argparse.Namespace) -> None:
    options, resample, verify = parse_options(args.opt), not args.no_resample, not args.no_verify_audio
    params = {
        "preparer": args.preparer or args.corpus,
        "sample_rate": args.sample_rate,
        "options": options,
        "resample": resample,
        "verify_audio": verify,
    }
    run_once(
        args.manifest_dir,
        f"data-{args.corpus}",
        params,
        args.force,
        lambda done: prepare_data(
            args.corpus,
            args.preparer or args.corpus,
            args.corpus_dir,
            args.manifest_dir,
            args.sample_rate,
            options,
            resample=resample,
            verify_audio=verify,
        ),
        inputs={"corpus": args.corpus_dir},
        outputs=[f"{args.corpus}_recordings_*", f"{args.corpus}_supervisions_*"],
    )


def cmd_compute_fbank(args: argparse.Namespace) -> None:

    try:
        config = KaldiFbankConfig(**parse_options(args.opt))
    except TypeError as e:
        raise ConfigError(f"compute-fbank: bad fbank option: {e}") from None
    parts = args.parts or manifest_parts(args.manifest_dir, args.corpus)
    if not parts:
        raise DataError([f"no {args.corpus}_supervisions_*.jsonl.gz in {args.manifest_dir}: run prepare-data first"])
    engine = replace(jobs_config(args), workers=args.workers or args.nj)
    for part in parts:  # one step per part: a new part does not redo the others
        recordings, supervisions = manifest_paths(args.manifest_dir, args.corpus, part)
        run_once(
            args.fbank_dir,
            FeatureSet(args.fbank_dir, args.corpus, part).marker_name,
            {"config": asdict(config), "chunk_size": args.chunk_size},
            args.force,
            lambda done, part=part: compute_fbank(
                args.manifest_dir,
                args.fbank_dir,
                args.corpus,
                part,
                config,
                chunk_size=args.chunk_size,
                resume_key=done.resume_key(),
                engine=engine,
            ),
            inputs={"recordings": recordings, "supervisions": supervisions},
            outputs=FeatureSet(args.fbank_dir, args.corpus, part).outputs(),
        )


def cmd_download(args: argparse.Namespace) -> None:
    log.info("%s is in %s", args.corpus, download_corpus(args.corpus, args.target_dir, force=args.force))


def add_data_verbs(sub) -> None:
    """Stages 0-1's verbs on ``sub`` (argparse subparsers)."""

    p = add_verb(sub, "synth-corpus", "generate the synthetic corpus: OUT_DIR/wav/<part>/*.wav, metadata.jsonl")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="SynthConfig field (seed, train_hours, ...)")
    add_jobs(p, nj=None, workers=1)  # one job: the corpus is one sequence of eSpeak calls (asrhybrid.data.synth)
    add_common(p)
    p.set_defaults(func=cmd_synth_corpus)

    p = add_verb(sub, "download", "download a corpus through Lhotse into TARGET_DIR (needs a network)")
    p.add_argument("corpus", help="yesno or mini_librispeech")
    p.add_argument("target_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_download)

    p = add_verb(
        sub, "prepare-data", "stage 0: Lhotse manifests MANIFEST_DIR/<corpus>_{recordings,supervisions}_<part>.jsonl.gz"
    )
    p.add_argument("corpus_dir", type=Path)
    p.add_argument("manifest_dir", type=Path)
    p.add_argument("--corpus", required=True, help="name used in the manifest file names")
    p.add_argument("--preparer", help="yesno, fsdd, synth, kaldi, librispeech (default: --corpus)")
    p.add_argument("--sample-rate", type=int, required=True)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="preparer option, e.g. split=upstream")
    p.add_argument("--no-resample", action="store_true", help="refuse audio at another sample rate")
    p.add_argument("--no-verify-audio", action="store_true", help="read headers only, do not decode every file")
    add_common(p)
    p.set_defaults(func=cmd_prepare_data)

    p = add_verb(
        sub,
        "compute-fbank",
        "stage 1: Kaldi fbank into FBANK_DIR: <corpus>_cuts_<part>.jsonl.gz, lilcom features, CMVN arks",
    )
    p.add_argument("manifest_dir", type=Path)
    p.add_argument("fbank_dir", type=Path)
    p.add_argument("--corpus", required=True)
    p.add_argument("--parts", nargs="+", help="default: every part in manifest_dir")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="fbank option, e.g. num_mel_bins=40")
    add_jobs(p, what="chunks computed at once (a chunk is a job)")
    p.add_argument("--num-jobs", dest="nj", type=int, help=argparse.SUPPRESS)  # the name before --nj
    p.add_argument("--chunk-size", type=int, default=500, help="cuts per resumable chunk")
    add_common(p)
    p.set_defaults(func=cmd_compute_fbank)
