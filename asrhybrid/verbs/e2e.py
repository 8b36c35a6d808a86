"""The end-to-end verbs (stages 9-10): train-e2e and decode-e2e. Scoring is ``asrhybrid score`` (it scores a
decode dir's hyp.txt) and RESULTS.md ``asrhybrid results``, as for the hybrid systems."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from asrhybrid.e2e.decode import E2EDecodeConfig, decode_e2e
from asrhybrid.e2e.hlg import make_hlg_graph
from asrhybrid.e2e.train import E2EConfig, train_e2e
from asrhybrid.errors import ConfigError
from asrhybrid.features.cmvn import global_mean_std
from asrhybrid.options import parse_options
from asrhybrid.outputs import atomic_output, run_once
from asrhybrid.verbs.common import (
    add_common,
    add_jobs,
    add_verb,
    jobs_config,
    nj_option,
    run_training,
    train_config,
)

log = logging.getLogger(__name__)


def cmd_train_e2e(args: argparse.Namespace) -> None:
    cfg = train_config(E2EConfig, args, "train-e2e")

    def train(device, resume_key):
        mean, std = global_mean_std(args.cmvn)
        summary = train_e2e(args.cuts, args.lang_dir, mean, std, args.exp_dir, cfg, resume_key, device)
        if summary["left_out"]:
            log.warning("left out of training: %s", summary["left_out"])

    run_training(args, "train-e2e", cfg, {"cuts": args.cuts, "tokens": args.lang_dir, "cmvn": args.cmvn}, train)


def cmd_decode_e2e(args: argparse.Namespace) -> None:

    try:
        cfg = E2EDecodeConfig(**parse_options(args.opt))
    except TypeError as e:
        raise ConfigError(f"decode-e2e: bad option: {e}") from None
    inputs = {"model": args.exp_dir / "final.pt", "cuts": args.cuts}
    if args.lm:
        inputs["lm"] = args.lm

    def work(done):
        s = decode_e2e(
            args.exp_dir,
            args.cuts,
            args.out_dir,
            cfg,
            args.lm,
            args.device,
            nj=args.nj,
            engine=jobs_config(args),
            resume_key=done.resume_key(),
        )
        log.info(
            "decoded %d utterances (%d failed) with %s search, real-time factor %.4f",
            s["utterances"],
            len(s["failed"]),
            cfg.method,
            s["real_time_factor"],
        )

    run_once(args.out_dir, "decode-e2e", {**asdict(cfg), **nj_option(args.nj)}, args.force, work, inputs=inputs)


def cmd_mkgraph_ctc(args: argparse.Namespace) -> None:
    def work(_):
        with atomic_output(args.graph_dir) as tmp:  # swapped in whole
            stats = make_hlg_graph(args.tokens_dir, args.lang_dir, tmp)
        print(f"HLG: {stats['states']} states, {stats['arcs']} arcs, {stats['words']} words, {stats['seconds']} s")

    run_once(
        args.graph_dir,
        "mkgraph-ctc",
        {},
        args.force,
        work,
        inputs={"tokens": args.tokens_dir, "G": args.lang_dir / "G.fst", "words": args.lang_dir / "words.txt"},
    )


def add_e2e_verbs(sub) -> None:
    p = add_verb(
        sub,
        "train-e2e",
        "stage 9: an end-to-end system (ctc: Deep Speech; rnnt: ContextNet RNN-T; las: Listen, "
        "Attend and Spell) on stage 3's "
        "tokens: "
        "EXP_DIR/final.pt, tokens/, epoch-N.pt, train.json",
    )
    p.add_argument("cuts", type=Path, help="training cuts with features and transcripts")
    p.add_argument("lang_dir", type=Path, help="stage 3's token dir (data/lang_<type>_<N>: *.model, tokens.txt)")
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats of the training features")
    p.add_argument("--system", default="ctc", choices=["ctc", "rnnt", "las"])
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="E2EConfig field, e.g. epochs=10")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. hidden=512")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda, cuda:N; data-parallel: "
        "torchrun --nproc-per-node N -m asrhybrid train-e2e ...",
    )
    add_common(p)
    p.set_defaults(func=cmd_train_e2e)

    p = add_verb(
        sub,
        "mkgraph-ctc",
        "icefall's HLG for a CTC system: GRAPH_DIR/HLG.k2.pt and words.txt, which "
        "asrhybrid decode reads (lattices for rescore and score)",
    )
    p.add_argument("tokens_dir", type=Path, help="the system's tokens (EXP_DIR/tokens) or stage 3's token dir")
    p.add_argument("lang_dir", type=Path, help="a lang dir with G.fst (format-lm's, e.g. data/lang_test_small)")
    p.add_argument("graph_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_mkgraph_ctc)

    p = add_verb(
        sub,
        "decode-e2e",
        "stage 10: recognise cuts with an end-to-end system: OUT_DIR/hyp.txt, decode.json "
        "(then asrhybrid score OUT_DIR CUTS)",
    )
    p.add_argument("exp_dir", type=Path, help="train-e2e's EXP_DIR")
    p.add_argument("cuts", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--lm", type=Path, help="word n-gram LM for shallow fusion (ARPA or KenLM binary; flashlight: ARPA)")
    p.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="E2EDecodeConfig field: method (greedy, beam, flashlight), beam, token_beam, alpha, beta, "
        "max_symbols and blank_penalty (RNN-T), ctc_weight, length_bonus, lm_fusion (rescore or shallow; LAS)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    add_jobs(p, what="jobs (an utterance's job: a hash of its id)")
    add_common(p)
    p.set_defaults(func=cmd_decode_e2e)
