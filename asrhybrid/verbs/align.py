"""Stages 4-5 verbs: the monophone model, the GMM-free flat start, the senone tree, and alignment generation
(Kaldi alignments, CTM, TextGrid, their quality and plots)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from asrhybrid.align import BACKENDS
from asrhybrid.align.flat_start import FlatStartConfig, flat_start
from asrhybrid.align.generation import align_corpus
from asrhybrid.align.plot import plot_word_boundaries
from asrhybrid.align.quality import boundary_errors
from asrhybrid.errors import ConfigError
from asrhybrid.hmm import MODEL_FILES, init_mono_model
from asrhybrid.options import parse_options
from asrhybrid.outputs import run_once, write_text_atomic
from asrhybrid.tree.build import build_senone_tree
from asrhybrid.verbs.common import add_common, add_jobs, add_verb, jobs_config

log = logging.getLogger("asrhybrid")


def cmd_init_mono(args: argparse.Namespace) -> None:
    run_once(
        args.model_dir,
        "init-mono",
        {},
        args.force,
        lambda done: init_mono_model(args.lang_dir, args.model_dir),
        {"lang": args.lang_dir},
        outputs=MODEL_FILES,
    )


def cmd_align_flat_start(args: argparse.Namespace) -> None:

    options = parse_options(args.opt)
    if args.backend:
        options["backend"] = args.backend
    try:
        cfg = FlatStartConfig(**options)
    except TypeError as e:
        raise ConfigError(f"align-flat-start: bad option: {e}") from None
    # checkpoints resume into more iterations, not across other options or inputs; a forced run starts over
    run_once(
        args.exp_dir,
        "flat-start",
        asdict(cfg),
        args.force,
        lambda done: flat_start(
            args.cuts,
            args.lang_dir,
            args.exp_dir,
            args.cmvn,
            cfg,
            resume_key=done.resume_key("iterations"),
            nj=args.nj,
            engine=jobs_config(args),
        ),
        inputs={"cuts": args.cuts, "lang": args.lang_dir, "cmvn": args.cmvn},
    )


def cmd_align(args: argparse.Namespace) -> None:
    run_once(
        args.out_dir,
        "align",
        {"backend": args.backend},  # not nj: the jobs' tables join into the same alignments
        args.force,
        lambda done: align_corpus(
            args.cuts,
            args.lang_dir,
            args.model_dir,
            args.out_dir,
            backend=args.backend,
            nj=args.nj,
            engine=jobs_config(args),
            resume_key=done.resume_key(),
        ),
        inputs={"cuts": args.cuts, "lang": args.lang_dir, "model": args.model_dir},
    )


def cmd_align_quality(args: argparse.Namespace) -> None:

    report = json.dumps(boundary_errors(args.cuts, args.align_dir), indent=1)
    write_text_atomic(args.align_dir / "quality.json", report + "\n")
    print(report)


def cmd_build_tree(args: argparse.Namespace) -> None:
    def work(done):
        log.info(
            "tree: %s",
            build_senone_tree(
                args.cuts,
                args.lang_dir,
                args.ci_dir,
                args.out_dir,
                args.cmvn,
                num_leaves=args.num_leaves,
                min_count=args.min_count,
                questions=args.questions,
                topology=args.topology,
                frame_subsampling_factor=args.frame_subsampling_factor,
            ),
        )

    options = {"num_leaves": args.num_leaves, "min_count": args.min_count, "questions": args.questions}
    if args.topology != "lang":  # a chain tree; a standard tree's options stay as they were (no re-run)
        options.update(topology=args.topology, frame_subsampling_factor=args.frame_subsampling_factor)
    run_once(
        args.out_dir,
        "build-tree",
        options,
        args.force,
        work,
        inputs={"cuts": args.cuts, "lang": args.lang_dir, "ci": args.ci_dir, "cmvn": args.cmvn},
    )


def cmd_plot_alignment(args: argparse.Namespace) -> None:
    log.info("wrote %s", plot_word_boundaries(args.cuts, args.word_ctm, args.png, args.max_utterances))


def add_align_verbs(sub) -> None:
    """Stages 4-5's verbs on ``sub`` (argparse subparsers)."""

    p = add_verb(sub, "init-mono", "a monophone model for a lang dir: MODEL_DIR/{topo,tree,trans.pkl}")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_init_mono)

    p = add_verb(
        sub, "align-flat-start", "stage 4: GMM-free flat start into EXP_DIR: ali.N.ark per iteration, ali.ark, final.pt"
    )
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats (Kaldi ark) of the training features")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="FlatStartConfig field, e.g. iterations=8")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="aligner for the realignments (default: the device's; see docs/alignment.md)",
    )
    add_jobs(p, what="jobs of each realignment (their alignments do not depend on it)")
    add_common(p)
    p.set_defaults(func=cmd_align_flat_start)

    p = add_verb(
        sub, "align", "alignments into OUT_DIR: Kaldi ali.{ark,scp}, word/phone CTM, a Praat TextGrid per recording"
    )
    p.add_argument("cuts", type=Path, help="cuts with features and transcripts")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path, help="tree, trans.pkl and final.pt (e.g. exp/mono_flat)")
    p.add_argument("out_dir", type=Path)
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="kaldi (C++ aligner, beams), k2 or torch (exact FSA engines); auto: the device's default",
    )
    add_jobs(p, what="jobs (a recording's utterances in one)")
    add_common(p)
    p.set_defaults(func=cmd_align)

    p = add_verb(sub, "align-quality", "word/phone boundary errors against reference times: ALIGN_DIR/quality.json")
    p.add_argument("cuts", type=Path, help="cuts whose supervisions carry reference alignments (synth)")
    p.add_argument("align_dir", type=Path, help="output of asrhybrid align")
    p.set_defaults(func=cmd_align_quality, log_file=None, force=False)

    p = add_verb(
        sub,
        "build-tree",
        "stage 5: senone tree from CI alignments into OUT_DIR: tree, trans.pkl, ali.ark, ali_pdf.ark, tree.json",
    )
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("lang_dir", type=Path)
    p.add_argument(
        "ci_dir",
        type=Path,
        help="the flat-start dir (tree, trans.pkl, ali.ark); for a chain tree, any aligned model dir",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats of the training features")
    p.add_argument("--num-leaves", type=int, default=500)
    p.add_argument("--min-count", type=float, default=100.0, help="frames each side of a split must keep")
    p.add_argument(
        "--questions",
        default="auto",
        choices=["auto", "arpabet", "both"],
        help="automatic phone clustering (any phone set), ARPAbet classes, or both",
    )
    p.add_argument(
        "--topology",
        default="lang",
        choices=["lang", "chain"],
        help="the lang dir's HMMs, or Kaldi chain's (one state, its own pdf on the first frame) for chain models",
    )
    p.add_argument(
        "--frame-subsampling-factor",
        type=int,
        default=1,
        help="chain topology: the tree and its alignments at 1/N of the frame rate (Kaldi's chain recipes: 3)",
    )
    add_common(p)
    p.set_defaults(func=cmd_build_tree)

    p = add_verb(sub, "plot-alignment", "PNG of the aligned words over each utterance's energy envelope")
    p.add_argument("cuts", type=Path)
    p.add_argument("word_ctm", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--max-utterances", type=int, default=30)
    p.set_defaults(func=cmd_plot_alignment, log_file=None, force=False)
