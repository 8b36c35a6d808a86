"""Stage 6 verbs: the hybrid acoustic models, realignment with one, and their scaled log-likelihoods."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from asrhybrid.align import BACKENDS
from asrhybrid.align.generation import align_corpus
from asrhybrid.chain.training import train_chain_am
from asrhybrid.features.cmvn import global_mean_std
from asrhybrid.hmm import MODEL_FILES, load_model
from asrhybrid.lang.io import read_int_list
from asrhybrid.nnet.inference import compute_loglikes
from asrhybrid.nnet.priors import silence_pdfs
from asrhybrid.nnet.train import TrainConfig, train_am
from asrhybrid.options import SYSTEMS, is_chain
from asrhybrid.outputs import run_once
from asrhybrid.verbs.common import add_common, add_jobs, add_verb, jobs_config, run_training, train_config

log = logging.getLogger("asrhybrid")


def cmd_train_am(args: argparse.Namespace) -> None:
    cfg = train_config(TrainConfig, args, "train-am")

    def train(device, resume_key):
        mean, std = global_mean_std(args.cmvn)
        if is_chain(cfg.system):
            train_chain_am(
                args.cuts, args.tree_dir, args.lang_dir, mean, std, args.exp_dir, cfg, resume_key, device=device
            )
            return
        _, trans_model = load_model(args.tree_dir)
        silence = silence_pdfs(trans_model, read_int_list(args.lang_dir / "phones" / "silence.int"))
        train_am(
            args.cuts,
            args.tree_dir / "ali_pdf.ark",
            trans_model.num_pdfs,
            silence,
            mean,
            std,
            args.exp_dir,
            cfg,
            resume_key=resume_key,
            device=device,
        )

    run_training(
        args,
        "train-am",
        cfg,
        {"cuts": args.cuts, "tree": args.tree_dir, "lang": args.lang_dir, "cmvn": args.cmvn},
        train,
    )


def cmd_align_am(args: argparse.Namespace) -> None:

    def work(done):
        for name in MODEL_FILES:  # the tree's model beside its alignments: train-am reads OUT_DIR as a tree dir
            shutil.copyfile(args.tree_dir / name, args.out_dir / name)
        align_corpus(
            args.cuts,
            args.lang_dir,
            args.tree_dir,
            args.out_dir,
            backend=args.backend,
            am_dir=args.am_dir,
            nj=args.nj,
            engine=jobs_config(args),
            resume_key=done.resume_key(),
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    run_once(
        args.out_dir,
        "align-am",
        {"backend": args.backend},  # not nj: the jobs' tables join into the same alignments
        args.force,
        work,
        inputs={"cuts": args.cuts, "lang": args.lang_dir, "tree": args.tree_dir, "am": args.am_dir / "final.pt"},
        outputs=["ali.ark", "ali.scp", "ali_pdf.ark", "ali_pdf.scp", "word.ctm", "phone.ctm", *MODEL_FILES],
    )


def cmd_compute_loglikes(args: argparse.Namespace) -> None:
    device = None if args.device == "auto" else args.device
    run_once(
        args.out_ark.parent,
        f"loglikes-{args.out_ark.stem}",
        {"acwt": args.acwt, "prior_scale": args.prior_scale},
        args.force,
        lambda done: log.info(
            "%d utterances",
            compute_loglikes(
                args.cuts,
                args.exp_dir,
                args.out_ark,
                args.acwt,
                args.prior_scale,
                device=device,
                nj=args.nj,
                engine=jobs_config(args),
                resume_key=done.resume_key(),
            ),
        ),
        inputs={"cuts": args.cuts, "model": args.exp_dir / "final.pt"},
        outputs=[args.out_ark.name, args.out_ark.with_suffix(".scp").name],
    )


def add_am_verbs(sub) -> None:
    """Stage 6's verbs on ``sub`` (argparse subparsers)."""

    p = add_verb(
        sub,
        "train-am",
        "stage 6: a hybrid acoustic model on the tree's senone alignments: EXP_DIR/final.pt "
        "(model, priors), epoch-N.pt, train.json",
    )
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("tree_dir", type=Path, help="stage 5's dir (trans.pkl, ali_pdf.{ark,scp})")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats of the training features")
    p.add_argument("--system", default="lstmp", choices=SYSTEMS, help="X_chain: network X trained with LF-MMI")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="TrainConfig field, e.g. epochs=10")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. cells=320")
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present), cpu, cuda, cuda:N; data-parallel: "
        "torchrun --nproc-per-node N -m asrhybrid train-am ...",
    )
    add_common(p)
    p.set_defaults(func=cmd_train_am)

    p = add_verb(
        sub,
        "align-am",
        "realign with a trained hybrid AM through the tree's training graphs (Kaldi's "
        "steps/nnet3/align.sh): OUT_DIR/ali.{ark,scp}, ali_pdf.{ark,scp}, {word,phone}.ctm, "
        "textgrid/ and the tree's model (so OUT_DIR is a tree dir for train-am)",
    )
    p.add_argument("cuts", type=Path)
    p.add_argument("lang_dir", type=Path)
    p.add_argument("tree_dir", type=Path, help="the tree dir the AM was trained on (tree, trans.pkl)")
    p.add_argument("am_dir", type=Path, help="train-am's EXP_DIR (final.pt)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    add_jobs(p, what="jobs (a recording's utterances in one)")
    add_common(p)
    p.set_defaults(func=cmd_align_am)

    p = add_verb(
        sub,
        "compute-loglikes",
        "scaled log-likelihoods acwt x (log posterior - prior_scale x log prior) "
        "per utterance: OUT_ARK (+ .scp), a Kaldi float-matrix table",
    )
    p.add_argument("cuts", type=Path)
    p.add_argument("exp_dir", type=Path, help="a trained system (train-am's EXP_DIR)")
    p.add_argument("out_ark", type=Path)
    p.add_argument("--acwt", type=float, default=1.0)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add_jobs(p, what="jobs (an utterance's job: a hash of its id)")
    add_common(p)
    p.set_defaults(func=cmd_compute_loglikes)
