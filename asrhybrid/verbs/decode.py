"""Stages 7-8 verbs: the graph (mkgraph) and decoding: decode, adapt-am, score, rescore, lattice-to-kaldi,
lattice-from-kaldi, transcribe."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from asrhybrid.decode.adapt import adapt_am
from asrhybrid.decode.corpus import decode_corpus, iter_lattices
from asrhybrid.decode.ctm import lattice_ctm
from asrhybrid.decode.decoder import DecodeConfig
from asrhybrid.decode.lattice import write_kaldi_lattices
from asrhybrid.decode.lattice_io import import_kaldi_lattices
from asrhybrid.decode.rescore import rescore_decode_dir
from asrhybrid.decode.scores import AcousticModelScores, LoglikeArchive, ScoreSource
from asrhybrid.decode.transcribe import transcribe
from asrhybrid.e2e.decode import CtcSystemScores
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.graph.k2graph import HLG_FILE
from asrhybrid.graph.mkgraph import mkgraph
from asrhybrid.nnet.adapt import AdaptConfig
from asrhybrid.nnet.checkpoint import E2E, FINAL, TrainedSystem, is_trained_system
from asrhybrid.nnet.inference import frame_step
from asrhybrid.nnet.trainer import default_device
from asrhybrid.options import parse_options
from asrhybrid.outputs import Completion, atomic_output, resume_or_clear, run_once
from asrhybrid.score.grid import refs_from_cuts, score_decode_dir
from asrhybrid.score.results import write_folds_results, write_results
from asrhybrid.score.wer import read_text
from asrhybrid.verbs.common import add_common, add_jobs, add_verb, jobs_config, nj_option

log = logging.getLogger("asrhybrid")


def _decode_config(pairs: list[str] | None):
    try:
        return DecodeConfig(**parse_options(pairs))
    except TypeError as e:
        raise ConfigError(
            f"decode: bad option: {e} (options: {', '.join(DecodeConfig.__dataclass_fields__)})"
        ) from None


def _scores_input(path: Path) -> Path:
    return path / FINAL if is_trained_system(path) else path


def score_source(path: Path, cuts: Path | None, cfg: DecodeConfig) -> ScoreSource:
    """What ``asrhybrid decode SCORES`` decodes: an acoustic model dir (train-am's), a CTC system dir (train-e2e's)
    or a compute-loglikes archive; a model needs the cuts."""
    if not is_trained_system(path):
        return LoglikeArchive(path)
    if cuts is None:
        raise DataError([f"{path} is a trained model: decoding it needs the cuts (--cuts)"])
    trained = TrainedSystem.load(path)
    if trained.kind == E2E:
        return CtcSystemScores(path, cuts, trained.num_outputs, acwt=cfg.acwt)
    return AcousticModelScores(
        path, cuts, trained.num_outputs, prior_scale=cfg.prior_scale, frame_step=frame_step(trained)
    )


def cmd_decode(args: argparse.Namespace) -> None:
    cfg = _decode_config(args.opt)
    device = str(default_device()) if args.device == "auto" else args.device

    hlg = args.graph_dir / HLG_FILE
    inputs = {"graph": hlg if hlg.is_file() else args.graph_dir / "HCLG.fst", "scores": _scores_input(args.scores)}
    if args.cuts:
        inputs["cuts"] = args.cuts
    done = Completion(
        args.out_dir, "decode", {**asdict(cfg), "nj": args.nj, "kaldi_reference": args.kaldi_reference}, inputs=inputs
    )
    if done.is_done(args.force):
        log.info("%s: 'decode' already done", args.out_dir)
        return
    resume_or_clear(args.out_dir, done.resume_key())  # finished jobs of the same decode are kept
    source = score_source(args.scores, args.cuts, cfg)
    summary = decode_corpus(
        args.graph_dir,
        source,
        args.out_dir,
        cfg,
        args.nj,
        device,
        compare_kaldi=args.kaldi_reference,
        engine=jobs_config(args),
    )
    log.info(
        "decoded %d of %d utterances (%d failed), %.0f frames/s, lattices %.2f arcs/frame",
        summary["decoded"],
        summary["utterances"],
        len(summary["failed"]),
        summary["decode_frames_per_second"],
        summary["lattice_arcs_per_frame"],
    )
    if "kaldi_reference" in summary:
        k = summary["kaldi_reference"]
        log.info(
            "Kaldi's LatticeFasterDecoder on the same graph and scores: same words on %d of %d utterances; "
            "k2's path scores at least as well on %d",
            k["same_words"],
            k["compared"],
            k["k2_better_or_equal"],
        )
    done.mark_done()


def cmd_adapt_am(args: argparse.Namespace) -> None:

    try:
        cfg = AdaptConfig(**parse_options(args.opt))
    except TypeError as e:
        raise ConfigError(
            f"adapt-am: bad option: {e} (options: {', '.join(AdaptConfig.__dataclass_fields__)})"
        ) from None
    device = str(default_device()) if args.device == "auto" else args.device

    def work(done):
        report = adapt_am(
            args.exp_dir,
            args.decode_dir,
            args.cuts,
            args.out_dir,
            cfg,
            args.graph,
            device,
            nj=args.nj,
            engine=jobs_config(args),
        )
        for speaker, r in report["speakers"].items():
            log.info(
                "%s: %d frames, frame cross-entropy on the first pass %.4f -> %.4f",
                speaker,
                r["frames"],
                r["ce_before"],
                r["ce_after"],
            )

    inputs = {"model": _scores_input(args.exp_dir), "first_pass": args.decode_dir / "decode.json", "cuts": args.cuts}
    if args.graph:
        inputs["graph"] = args.graph / "trans.pkl"
    run_once(args.out_dir, "adapt-am", {**asdict(cfg), **nj_option(args.nj)}, args.force, work, inputs=inputs)


def _references(source: Path) -> dict[str, str]:
    return read_text(source) if source.name == "text" or source.suffix == ".txt" else refs_from_cuts(source)


def _floats(text: str) -> list[float]:
    """``7:17`` (integers from 7 to 17), ``0,0.5,1.0`` or one number."""
    try:
        if ":" in text:
            a, b = text.split(":")
            return [float(x) for x in range(int(a), int(b) + 1)]
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"'{text}': a range A:B of integers or numbers separated by commas") from None


def cmd_score(args: argparse.Namespace) -> None:
    params = None
    if args.params_from:
        chosen = json.loads((args.params_from / "scoring.json").read_text())
        params = {"lmwt": chosen["lmwt"], "wip": chosen["wip"], "source": str(args.params_from)}
    step = "score-chosen" if params else "score"

    def work(done):
        summary = score_decode_dir(
            args.decode_dir, _references(args.refs), _floats(args.lmwt), _floats(args.wip), params
        )
        print(summary["wer_line"])

    inputs = {"refs": args.refs, "lattices": args.decode_dir / "decode.json"}
    if args.params_from:
        inputs["params"] = args.params_from / "scoring.json"
    run_once(
        args.decode_dir,
        step,
        {"lmwt": args.lmwt, "wip": args.wip},
        args.force,
        work,
        inputs=inputs,
        outputs=["scoring", "wer_*", "best_wer", "chosen_wer", "errs-*", "recogs-*", "scoring*.json"],
    )


def cmd_rescore(args: argparse.Namespace) -> None:
    def work(done):
        summary = rescore_decode_dir(
            args.lat_dir,
            args.old_lm,
            args.new_lm,
            args.out_dir,
            args.method,
            args.n,
            args.nbest_lmwt,
            engine=jobs_config(args),
        )
        r = summary["rescoring"]
        log.info("rescored %d lattices (%s): %.4f s per lattice", r["lattices"], r["method"], r["seconds_per_lattice"])

    run_once(
        args.out_dir,
        f"rescore-{args.method}",
        {"n": args.n, "nbest_lmwt": args.nbest_lmwt},
        args.force,
        work,
        inputs={"lattices": args.lat_dir / "decode.json", "old_lm": args.old_lm, "new_lm": args.new_lm},
    )


def cmd_lattice_to_kaldi(args: argparse.Namespace) -> None:
    with atomic_output(args.out) as tmp:
        count = write_kaldi_lattices(tmp, iter_lattices(args.decode_dir))
    log.info(
        "%d lattices to %s (Kaldi text CompactLattice: lattice-copy 'ark:%s' ark:lat.ark makes it binary)",
        count,
        args.out,
        args.out,
    )


def cmd_lattice_from_kaldi(args: argparse.Namespace) -> None:
    summary = import_kaldi_lattices(args.archives, args.words_txt, args.out_dir, args.acoustic_scale)
    log.info("%d lattices from %d archive(s) into %s", summary["utterances"], len(args.archives), args.out_dir)


def cmd_lattice_ctm(args: argparse.Namespace) -> None:
    summary = lattice_ctm(
        args.decode_dir,
        args.graph_dir,
        args.out,
        args.lmwt,
        args.wip,
        frame_subsampling_factor=args.frame_subsampling_factor,
    )
    for problem in summary["failed"]:
        log.error("%s", problem)
    log.info("%d utterances aligned into %s (%d failed)", summary["utterances"], args.out, len(summary["failed"]))


def cmd_results(args: argparse.Namespace) -> None:
    corpus = args.corpus or args.workdir.name
    if args.folds:
        path = write_folds_results(args.workdir, corpus, args.folds.split(","), args.fold_option)
    else:
        path = write_results(args.workdir, corpus)
    print(path.read_text(encoding="utf-8"))


def cmd_transcribe(args: argparse.Namespace) -> None:
    for utt, words in transcribe(
        args.exp_dir,
        args.audio,
        args.graph,
        args.rescore,
        args.old_lm,
        _decode_config(args.opt),
        args.max_segment,
        args.device,
    ):
        print(f"{utt} {words}".rstrip(), flush=True)


def cmd_mkgraph(args: argparse.Namespace) -> None:
    def work(done):
        with atomic_output(args.graph_dir) as tmp:  # swapped in whole: no file of an earlier graph survives
            stats = mkgraph(args.lang_dir, args.model_dir, tmp, self_loop_scale=args.self_loop_scale)
        print(f"HCLG: {stats['states']} states, {stats['arcs']} arcs, {stats['seconds']} s")

    model = args.model_dir
    run_once(
        args.graph_dir,
        "mkgraph",
        {"self_loop_scale": args.self_loop_scale},
        args.force,
        work,
        inputs={
            "lang": args.lang_dir,
            "G": args.lang_dir / "G.fst",
            "tree": model / "tree",
            "trans": model / "trans.pkl",
        },
    )


def add_decode_verbs(sub) -> None:
    """Stages 7-8's verbs on ``sub`` (argparse subparsers)."""
    _add_search_verbs(sub)
    _add_scoring_verbs(sub)
    _add_lattice_verbs(sub)


def _add_search_verbs(sub) -> None:
    """The graph and the first pass: mkgraph, decode, adapt-am (a second pass's model), transcribe."""
    p = add_verb(
        sub,
        "mkgraph",
        "Kaldi's mkgraph.sh: GRAPH_DIR/HCLG.fst, words.txt, phones/ for a lang dir with G.fst and a model",
    )
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    p.add_argument("graph_dir", type=Path)
    p.add_argument("--self-loop-scale", type=float, default=0.1)
    add_common(p)
    p.set_defaults(func=cmd_mkgraph)

    p = add_verb(
        sub,
        "decode",
        "stage 8: lattices of every utterance over HCLG with k2 (Kaldi's decode.sh): OUT_DIR/lat.N.gz "
        "(Kaldi text CompactLattice), best.N.jsonl (1-best words, alignment), decode.json",
    )
    p.add_argument(
        "graph_dir",
        type=Path,
        help="mkgraph's GRAPH_DIR (HCLG.fst, its k2 form, words.txt, the model), "
        "or mkgraph-ctc's (HLG.k2.pt, words.txt)",
    )
    p.add_argument(
        "scores",
        type=Path,
        help="an acoustic model dir (train-am's EXP_DIR), compute-loglikes' archive "
        "(acwt 1), or a CTC system's dir (train-e2e's EXP_DIR) with an HLG",
    )
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cuts", type=Path, help="the cuts to decode (needed with an acoustic model)")
    p.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="DecodeConfig field: acwt, prior_scale, search_beam, output_beam, min_active, max_active, "
        "lattice_beam, max_lattice_states, batch_frames",
    )
    add_jobs(p, what="jobs (an utterance's job: a hash of its id)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--kaldi-reference",
        action="store_true",
        help="also decode with Kaldi's LatticeFasterDecoder and report the agreement in decode.json",
    )
    add_common(p)
    p.set_defaults(func=cmd_decode)

    p = add_verb(
        sub,
        "adapt-am",
        "unsupervised speaker adaptation of an acoustic model on its first pass: per-speaker "
        "LIN and LHUC transforms trained on a decode's best paths, into a model dir that "
        "decode takes (the second pass)",
    )
    p.add_argument("exp_dir", type=Path, help="the system (train-am's EXP_DIR, or an adapted one: its base is used)")
    p.add_argument("decode_dir", type=Path, help="its decode of the cuts (best.N.jsonl: the targets)")
    p.add_argument("out_dir", type=Path, help="the adapted system: final.pt with the speakers' transforms, adapt.json")
    p.add_argument("--cuts", type=Path, required=True, help="the cuts that were decoded")
    p.add_argument(
        "--graph", type=Path, help="a dir with the transition model (trans.pkl; default: the decode's graph)"
    )
    p.add_argument(
        "--opt",
        action="append",
        metavar="KEY=VALUE",
        help="AdaptConfig field: transforms ([lin, lhuc]), epochs, lr, max_duration, max_grad_norm, seed",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    add_jobs(p, what="jobs (a speaker's job: a hash of its name)")
    add_common(p)
    p.set_defaults(func=cmd_adapt_am)

    p = add_verb(
        sub,
        "transcribe",
        "recognise audio with a trained system (features, CMVN, network, priors, graph, "
        "optional rescoring): prints 'utt-id words' per file",
    )
    p.add_argument("exp_dir", type=Path, help="a trained system in a recipe workdir (WORKDIR/exp/SYSTEM)")
    p.add_argument(
        "audio", type=Path, nargs="+", help="audio files (any rate: resampled), wav.scp files or cuts manifests"
    )
    p.add_argument("--graph", type=Path, help="graph dir (default WORKDIR/exp/tree/graph_small)")
    p.add_argument("--rescore", type=Path, metavar="LM", help="rescore the lattice with this LM (ARPA or G.fst)")
    p.add_argument(
        "--old-lm", type=Path, help="the graph's LM, removed when rescoring (default WORKDIR/data/lm/small.arpa)"
    )
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="DecodeConfig field (acwt, beams, ...)")
    p.add_argument("--max-segment", type=float, default=30.0, help="longer audio is cut into segments of at most this")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_transcribe, log_file=None, force=False)


def _add_scoring_verbs(sub) -> None:
    """Rescoring and scoring a decode dir, and the RESULTS.md of a workdir."""
    p = add_verb(
        sub,
        "rescore",
        "LM rescoring of saved lattices (Kaldi's lmrescore: old LM out, new LM in) into OUT_DIR, "
        "a decode dir: whole-lattice through k2 or n-best through KenLM",
    )
    p.add_argument("lat_dir", type=Path, help="a decode dir")
    p.add_argument("old_lm", type=Path, help="the first pass's LM (ARPA or KenLM binary)")
    p.add_argument("new_lm", type=Path, help="ARPA (or G.fst for --method lattice, KenLM binary for nbest)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--method", default="lattice", choices=["lattice", "nbest"])
    p.add_argument("--n", type=int, default=100, help="n-best: unique word sequences per lattice")
    p.add_argument("--nbest-lmwt", type=float, default=10.0, help="n-best: the LM weight they are drawn at")
    add_jobs(p, nj=None, workers=1)  # one job per lattice archive; in this process unless told (milliseconds a lattice)
    add_common(p)
    p.set_defaults(func=cmd_rescore)

    p = add_verb(
        sub,
        "score",
        "Kaldi's scoring grid over a decode dir's lattices: wer_LMWT_WIP, best_wer (or chosen_wer "
        "with --params-from a dev decode), errs-*/recogs-*, scoring.json",
    )
    p.add_argument("decode_dir", type=Path)
    p.add_argument("refs", type=Path, help="the cuts manifest decoded, or a Kaldi text file")
    p.add_argument("--lmwt", default="7:17", help="LM weights: A:B or a list (default 7:17)")
    p.add_argument("--wip", default="0,0.5,1.0", help="word insertion penalties (default 0,0.5,1.0)")
    p.add_argument("--params-from", type=Path, help="a scored dev decode dir: apply its best LMWT and WIP here")
    add_common(p)
    p.set_defaults(func=cmd_score)

    p = add_verb(
        sub,
        "results",
        "WORKDIR/RESULTS.md from every scored decode dir under WORKDIR/exp (Kaldi-style "
        "%WER lines per system, part, LM and method; the commands)",
    )
    p.add_argument("workdir", type=Path)
    p.add_argument("--corpus", help="its name in the title (default: the workdir's name)")
    p.add_argument(
        "--folds",
        help="NAME,NAME,...: a recipe run in folds (WORKDIR/fold_NAME): each fold's WER, their "
        "mean and worst, and results_folds.json",
    )
    p.add_argument("--fold-option", help="the data option the folds set (named in the text)")
    add_common(p)
    p.set_defaults(func=cmd_results)


def _add_lattice_verbs(sub) -> None:
    """Lattices out of and into a decode dir: CTM, and Kaldi's lattice archives."""
    p = add_verb(
        sub,
        "lattice-ctm",
        "the word alignment (CTM) of each lattice's best path at an LM weight "
        "(Kaldi's lattice-align-words-lexicon + nbest-to-ctm)",
    )
    p.add_argument("decode_dir", type=Path)
    p.add_argument("graph_dir", type=Path, help="the graph the lattices were made with (phones/, its model)")
    p.add_argument("out", type=Path, help="the CTM file")
    p.add_argument("--lmwt", type=float, default=10.0)
    p.add_argument("--wip", type=float, default=0.0)
    p.add_argument(
        "--frame-subsampling-factor",
        type=int,
        help="feature frames (10 ms) per lattice frame (default: the decode dir's decode.json, where a chain "
        "model's decode records 3; else 1)",
    )
    p.set_defaults(func=cmd_lattice_ctm, log_file=None, force=False)

    p = add_verb(
        sub,
        "lattice-to-kaldi",
        "a decode dir's lattices as one Kaldi text CompactLattice archive "
        "(lattice-copy ark,t: layout; .gz to compress)",
    )
    p.add_argument("decode_dir", type=Path)
    p.add_argument("out", type=Path)
    p.set_defaults(func=cmd_lattice_to_kaldi, log_file=None, force=False)

    p = add_verb(
        sub,
        "lattice-from-kaldi",
        "Kaldi text CompactLattice archives (from a real Kaldi: lattice-copy "
        "'ark:gunzip -c lat.1.gz|' ark,t:-) into a decode dir that every tool here reads",
    )
    p.add_argument("words_txt", type=Path, help="the words.txt of the graph the lattices were made with")
    p.add_argument("out_dir", type=Path)
    p.add_argument("archives", type=Path, nargs="+")
    p.add_argument(
        "--acoustic-scale",
        type=float,
        default=1.0,
        help="divide acoustic costs by this (1: Kaldi writes lattices unscaled)",
    )
    p.set_defaults(func=cmd_lattice_from_kaldi, log_file=None, force=False)
