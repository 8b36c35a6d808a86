"""The verbs of stages 0-6: corpus, features, lang, LMs, tokens, flat-start alignment, the tree, the hybrid
acoustic models, and alignment generation (align, plot-alignment)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from lhotse import load_manifest

from asrhybrid.align import BACKENDS
from asrhybrid.align.flat_start import FlatStartConfig, flat_start
from asrhybrid.align.generation import align_corpus
from asrhybrid.align.plot import plot_word_boundaries
from asrhybrid.align.quality import boundary_errors
from asrhybrid.data.download import download_corpus
from asrhybrid.data.manifests import manifest_paths
from asrhybrid.data.prepare import manifest_parts, prepare_data
from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.features.cmvn import global_mean_std
from asrhybrid.features.compute import compute_fbank, fbank_outputs
from asrhybrid.features.fbank import KaldiFbankConfig
from asrhybrid.graph.mkgraph import mkgraph
from asrhybrid.install import check_install
from asrhybrid.lang.dicts import prepare_dict
from asrhybrid.lang.io import read_int_list, read_symbol_table
from asrhybrid.lang.prepare_lang import prepare_lang
from asrhybrid.lm.bpe import train_tokens
from asrhybrid.lm.train import arpa_to_g, train_lm
from asrhybrid.model import MODEL_FILES, init_mono_model, load_model
from asrhybrid.nnet.inference import compute_loglikes
from asrhybrid.nnet.priors import silence_pdfs
from asrhybrid.nnet.train import TrainConfig, train_am
from asrhybrid.options import parse_options
from asrhybrid.outputs import atomic_output, run_once, write_text_atomic
from asrhybrid.tree.build import build_senone_tree
from asrhybrid.verbs.common import add_common, add_verb, run_training, train_config

log = logging.getLogger("asrhybrid")


def cmd_synth_corpus(args: argparse.Namespace) -> None:

    options = parse_options(args.opt)
    if "snr_db" in options:
        options["snr_db"] = tuple(options["snr_db"])
    try:
        cfg = SynthConfig(**options)
    except TypeError as e:
        raise ConfigError(f"synth-corpus: bad option: {e}") from None
    run_once(args.out_dir, "synth-corpus", asdict(cfg), args.force,
             lambda done: generate_corpus(args.out_dir, cfg, resume_key=done.resume_key()))


def cmd_prepare_data(args: argparse.Namespace) -> None:
    options, resample, verify = parse_options(args.opt), not args.no_resample, not args.no_verify_audio
    params = {"preparer": args.preparer or args.corpus, "sample_rate": args.sample_rate, "options": options,
              "resample": resample, "verify_audio": verify}
    run_once(args.manifest_dir, f"data-{args.corpus}", params, args.force,
             lambda done: prepare_data(args.corpus, args.preparer or args.corpus, args.corpus_dir, args.manifest_dir,
                                       args.sample_rate, options, resample=resample, verify_audio=verify),
             inputs={"corpus": args.corpus_dir},
             outputs=[f"{args.corpus}_recordings_*", f"{args.corpus}_supervisions_*"])


def cmd_compute_fbank(args: argparse.Namespace) -> None:

    try:
        config = KaldiFbankConfig(**parse_options(args.opt))
    except TypeError as e:
        raise ConfigError(f"compute-fbank: bad fbank option: {e}") from None
    parts = args.parts or manifest_parts(args.manifest_dir, args.corpus)
    if not parts:
        raise DataError([f"no {args.corpus}_supervisions_*.jsonl.gz in {args.manifest_dir}: run prepare-data first"])
    for part in parts:  # one step per part: a new part does not redo the others
        recordings, supervisions = manifest_paths(args.manifest_dir, args.corpus, part)
        run_once(args.fbank_dir, f"fbank-{args.corpus}-{part}", {"config": asdict(config), "chunk_size": args.chunk_size},
                 args.force,
                 lambda done, part=part: compute_fbank(args.manifest_dir, args.fbank_dir, args.corpus, part, config,
                                                       num_jobs=args.num_jobs, chunk_size=args.chunk_size,
                                                       resume_key=done.resume_key()),
                 inputs={"recordings": recordings, "supervisions": supervisions},
                 outputs=fbank_outputs(args.fbank_dir, args.corpus, part))


def cmd_download(args: argparse.Namespace) -> None:
    log.info("%s is in %s", args.corpus, download_corpus(args.corpus, args.target_dir, force=args.force))


def read_texts(sources: list[Path]) -> list[str]:
    """Sentences from Lhotse supervision manifests (.jsonl[.gz]) or plain text files (one a line)."""

    texts: list[str] = []
    for src in sources or []:
        if not Path(src).is_file():
            raise DataError([f"{src}: no such file"])
        if str(src).endswith((".jsonl.gz", ".jsonl")):
            texts += [s.text for s in load_manifest(src)]
        else:
            try:
                texts += Path(src).read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise DataError([f"{src}: not valid UTF-8 (byte {e.start})"]) from None
    return texts


def text_inputs(sources: list[Path] | None, role: str = "text") -> dict[str, Path]:
    """Text sources by role, for completion markers (text0, text1, ...)."""
    return {f"{role}{k}": Path(src) for k, src in enumerate(sources or [])}


def cmd_prepare_dict(args: argparse.Namespace) -> None:
    source_dir = Path(args.lexicon) if Path(args.lexicon).is_dir() else None
    params = {"lexicon": "dict dir" if source_dir else args.lexicon, "stress": not args.no_stress}
    inputs = {**text_inputs(args.text), **({"lexicon": source_dir} if source_dir else {})}

    def work(done):
        with atomic_output(args.dict_dir) as tmp:  # swapped in whole: no file of an earlier run survives
            oov = prepare_dict(args.lexicon, tmp, read_texts(args.text), stress=not args.no_stress)
        if oov and args.lexicon != "cmudict":  # (CMUdict's misses are listed in missing_words.txt, and logged)
            log.warning("%d transcript word(s) are not in the %s lexicon and map to the OOV word: %s", len(oov),
                        args.lexicon, " ".join(oov[:20]) + (" ..." if len(oov) > 20 else ""))

    run_once(args.dict_dir, "prepare-dict", params, args.force, work, inputs)


def cmd_prepare_lang(args: argparse.Namespace) -> None:
    params = {"oov": args.oov, "position_dependent": not args.no_position_dependent, "sil_prob": args.sil_prob}
    run_once(args.lang_dir, "prepare-lang", params, args.force,
             lambda done: prepare_lang(args.dict_dir, args.lang_dir, args.oov, sil_prob=args.sil_prob,
                                       position_dependent_phones=not args.no_position_dependent),
             inputs={"dict": args.dict_dir})


def cmd_train_lm(args: argparse.Namespace) -> None:

    params = {"order": args.order, "prune": args.prune, "binary": args.binary, "oov": args.oov}
    inputs = {**text_inputs(args.text), **text_inputs(args.dev, "dev"), **({"words": args.words} if args.words else {})}

    def work(done):
        texts, dev = read_texts(args.text), read_texts(args.dev)
        words = set(read_symbol_table(args.words)) if args.words else None
        summary = train_lm(texts, args.out_dir, args.name, args.order, words=words, oov_word=args.oov,
                           prune=args.prune, binary=args.binary, dev_lines=dev, source=" ".join(map(str, args.text)))
        write_text_atomic(args.out_dir / f"{args.name}.json", json.dumps(summary, indent=1) + "\n")

    run_once(args.out_dir, f"train-lm-{args.name}", params, args.force, work, inputs, outputs=[f"{args.name}.*"])


def cmd_arpa2fst(args: argparse.Namespace) -> None:
    arpa_to_g(args.arpa, args.words, args.g_fst)


def cmd_format_lm(args: argparse.Namespace) -> None:
    """Kaldi's utils/format_lm.sh: a copy of the lang dir with G.fst from the ARPA."""

    def work(done):
        with atomic_output(args.out_dir) as tmp:  # swapped in whole: no file of an earlier run survives
            shutil.copytree(args.lang_dir, tmp, ignore=shutil.ignore_patterns(".done.*", ".partial.*", ".tmp*"))
            arpa_to_g(args.arpa, tmp / "words.txt", tmp / "G.fst")

    run_once(args.out_dir, "format-lm", {}, args.force, work, {"lang": args.lang_dir, "arpa": args.arpa})


def cmd_train_bpe(args: argparse.Namespace) -> None:
    params = {"vocab_size": args.vocab_size, "model_type": args.model_type}
    run_once(args.out_dir, f"train-bpe-{args.model_type}", params, args.force,
             lambda done: train_tokens(read_texts(args.text), args.out_dir, args.vocab_size, args.model_type),
             text_inputs(args.text))


def cmd_init_mono(args: argparse.Namespace) -> None:
    run_once(args.model_dir, "init-mono", {}, args.force, lambda done: init_mono_model(args.lang_dir, args.model_dir),
             {"lang": args.lang_dir}, outputs=MODEL_FILES)


def cmd_mkgraph(args: argparse.Namespace) -> None:
    def work(done):
        with atomic_output(args.graph_dir) as tmp:  # swapped in whole: no file of an earlier graph survives
            stats = mkgraph(args.lang_dir, args.model_dir, tmp, self_loop_scale=args.self_loop_scale)
        print(f"HCLG: {stats['states']} states, {stats['arcs']} arcs, {stats['seconds']} s")

    model = args.model_dir
    run_once(args.graph_dir, "mkgraph", {"self_loop_scale": args.self_loop_scale}, args.force, work,
             inputs={"lang": args.lang_dir, "G": args.lang_dir / "G.fst", "tree": model / "tree", "trans": model / "trans.pkl"})


def cmd_align_flat_start(args: argparse.Namespace) -> None:

    options = parse_options(args.opt)
    if args.backend:
        options["backend"] = args.backend
    try:
        cfg = FlatStartConfig(**options)
    except TypeError as e:
        raise ConfigError(f"align-flat-start: bad option: {e}") from None
    # checkpoints resume into more iterations, not across other options or inputs; a forced run starts over
    run_once(args.exp_dir, "flat-start", asdict(cfg), args.force,
             lambda done: flat_start(args.cuts, args.lang_dir, args.exp_dir, args.cmvn, cfg,
                                     resume_key=done.resume_key("iterations")),
             inputs={"cuts": args.cuts, "lang": args.lang_dir, "cmvn": args.cmvn})


def cmd_align(args: argparse.Namespace) -> None:
    run_once(args.out_dir, "align", {"backend": args.backend}, args.force,
             lambda done: align_corpus(args.cuts, args.lang_dir, args.model_dir, args.out_dir, backend=args.backend),
             inputs={"cuts": args.cuts, "lang": args.lang_dir, "model": args.model_dir})


def cmd_align_quality(args: argparse.Namespace) -> None:

    report = json.dumps(boundary_errors(args.cuts, args.align_dir), indent=1)
    write_text_atomic(args.align_dir / "quality.json", report + "\n")
    print(report)


def cmd_build_tree(args: argparse.Namespace) -> None:
    def work(done):
        log.info("tree: %s", build_senone_tree(args.cuts, args.lang_dir, args.ci_dir, args.out_dir, args.cmvn,
                                               num_leaves=args.num_leaves, min_count=args.min_count,
                                               questions=args.questions))

    run_once(args.out_dir, "build-tree", {"num_leaves": args.num_leaves, "min_count": args.min_count,
                                          "questions": args.questions}, args.force, work,
             inputs={"cuts": args.cuts, "lang": args.lang_dir, "ci": args.ci_dir, "cmvn": args.cmvn})


def cmd_train_am(args: argparse.Namespace) -> None:
    cfg = train_config(TrainConfig, args, "train-am")

    def train(device, resume_key):
        _, trans_model = load_model(args.tree_dir)
        mean, std = global_mean_std(args.cmvn)
        silence = silence_pdfs(trans_model, read_int_list(args.lang_dir / "phones" / "silence.int"))
        train_am(args.cuts, args.tree_dir / "ali_pdf.ark", trans_model.num_pdfs, silence, mean, std, args.exp_dir,
                 cfg, resume_key=resume_key, device=device)

    run_training(args, "train-am", cfg,
                 {"cuts": args.cuts, "tree": args.tree_dir, "lang": args.lang_dir, "cmvn": args.cmvn}, train)


def cmd_align_am(args: argparse.Namespace) -> None:

    def work(done):
        for name in MODEL_FILES:  # the tree's model beside its alignments: train-am reads OUT_DIR as a tree dir
            shutil.copyfile(args.tree_dir / name, args.out_dir / name)
        align_corpus(args.cuts, args.lang_dir, args.tree_dir, args.out_dir, backend=args.backend, am_dir=args.am_dir)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    run_once(args.out_dir, "align-am", {"backend": args.backend}, args.force, work,
             inputs={"cuts": args.cuts, "lang": args.lang_dir, "tree": args.tree_dir, "am": args.am_dir / "final.pt"},
             outputs=["ali.ark", "ali.scp", "ali_pdf.ark", "ali_pdf.scp", "word.ctm", "phone.ctm", *MODEL_FILES])


def cmd_compute_loglikes(args: argparse.Namespace) -> None:
    device = None if args.device == "auto" else args.device
    run_once(args.out_ark.parent, f"loglikes-{args.out_ark.stem}", {"acwt": args.acwt, "prior_scale": args.prior_scale},
             args.force, lambda done: log.info("%d utterances", compute_loglikes(
                 args.cuts, args.exp_dir, args.out_ark, args.acwt, args.prior_scale, device=device)),
             inputs={"cuts": args.cuts, "model": args.exp_dir / "final.pt"},
             outputs=[args.out_ark.name, args.out_ark.with_suffix(".scp").name])


def cmd_plot_alignment(args: argparse.Namespace) -> None:
    log.info("wrote %s", plot_word_boundaries(args.cuts, args.word_ctm, args.png, args.max_utterances))


def cmd_check_install(args: argparse.Namespace) -> None:
    check_install()


def add_hybrid_verbs(sub) -> None:
    """The verbs of stages 0-6 (and alignment generation) on ``sub`` (argparse subparsers)."""

    p = add_verb(sub, "synth-corpus", "generate the synthetic corpus: OUT_DIR/wav/<part>/*.wav, metadata.jsonl")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="SynthConfig field (seed, train_hours, ...)")
    add_common(p)
    p.set_defaults(func=cmd_synth_corpus)

    p = add_verb(sub, "download", "download a corpus through Lhotse into TARGET_DIR (needs a network)")
    p.add_argument("corpus", help="yesno or mini_librispeech")
    p.add_argument("target_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_download)

    p = add_verb(sub, "prepare-data", "stage 0: Lhotse manifests MANIFEST_DIR/<corpus>_{recordings,supervisions}_<part>.jsonl.gz")
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

    p = add_verb(sub, "compute-fbank", "stage 1: Kaldi fbank into FBANK_DIR: <corpus>_cuts_<part>.jsonl.gz, lilcom features, CMVN arks")
    p.add_argument("manifest_dir", type=Path)
    p.add_argument("fbank_dir", type=Path)
    p.add_argument("--corpus", required=True)
    p.add_argument("--parts", nargs="+", help="default: every part in manifest_dir")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="fbank option, e.g. num_mel_bins=40")
    p.add_argument("--num-jobs", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=500, help="cuts per resumable chunk")
    add_common(p)
    p.set_defaults(func=cmd_compute_fbank)

    p = add_verb(sub, "prepare-dict", "stage 2: a Kaldi dict dir DICT_DIR (lexicon.txt, phone lists) for a corpus's words")
    p.add_argument("dict_dir", type=Path)
    p.add_argument("--lexicon", required=True, help="yesno, cmudict, or a Kaldi dict dir to copy")
    p.add_argument("--text", type=Path, nargs="+", required=True, help="transcripts: supervisions manifests or text files")
    p.add_argument("--no-stress", action="store_true", help="strip CMUdict's stress marks")
    add_common(p)
    p.set_defaults(func=cmd_prepare_dict)

    p = add_verb(sub, "prepare-lang", "stage 2: Kaldi's prepare_lang.sh into LANG_DIR (phones, words, topo, L.fst, L_disambig.fst)")
    p.add_argument("dict_dir", type=Path)
    p.add_argument("lang_dir", type=Path)
    p.add_argument("--oov", required=True, help="the word OOVs map to (e.g. <UNK>)")
    p.add_argument("--no-position-dependent", action="store_true", help="no _B/_E/_I/_S word-position phones")
    p.add_argument("--sil-prob", type=float, default=0.5)
    add_common(p)
    p.set_defaults(func=cmd_prepare_lang)

    p = add_verb(sub, "train-lm", "stage 3: an n-gram LM with KenLM's lmplz: OUT_DIR/NAME.arpa (and .bin), NAME.json (perplexity)")
    p.add_argument("text", type=Path, nargs="+", help="supervisions manifests or text files")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--prune", type=int, nargs="+", help="lmplz --prune thresholds per order")
    p.add_argument("--binary", action="store_true", help="also a KenLM binary model")
    p.add_argument("--dev", type=Path, nargs="*", help="text for the perplexity report")
    p.add_argument("--words", type=Path, help="words.txt: other words map to --oov")
    p.add_argument("--oov", help="the OOV word (with --words)")
    add_common(p)
    p.set_defaults(func=cmd_train_lm)

    p = add_verb(sub, "arpa2fst", "G_FST from an ARPA LM (Kaldi's arpa2fst, #0 on back-off arcs)")
    p.add_argument("arpa", type=Path)
    p.add_argument("words", type=Path)
    p.add_argument("g_fst", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_arpa2fst)

    p = add_verb(sub, "format-lm", "Kaldi's format_lm.sh: OUT_DIR, a copy of LANG_DIR with G.fst from the ARPA")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("arpa", type=Path)
    p.add_argument("out_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_format_lm)

    p = add_verb(sub, "train-bpe", "stage 3: SentencePiece tokens for end-to-end models: OUT_DIR/<type>.model, tokens.txt")
    p.add_argument("text", type=Path, nargs="+")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char"])
    add_common(p)
    p.set_defaults(func=cmd_train_bpe)

    p = add_verb(sub, "init-mono", "a monophone model for a lang dir: MODEL_DIR/{topo,tree,trans.pkl}")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    add_common(p)
    p.set_defaults(func=cmd_init_mono)

    p = add_verb(sub, "mkgraph", "Kaldi's mkgraph.sh: GRAPH_DIR/HCLG.fst, words.txt, phones/ for a lang dir with G.fst and a model")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    p.add_argument("graph_dir", type=Path)
    p.add_argument("--self-loop-scale", type=float, default=0.1)
    add_common(p)
    p.set_defaults(func=cmd_mkgraph)

    p = add_verb(sub, "align-flat-start", "stage 4: GMM-free flat start into EXP_DIR: ali.N.ark per iteration, ali.ark, final.pt")
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats (Kaldi ark) of the training features")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="FlatStartConfig field, e.g. iterations=8")
    p.add_argument("--backend", choices=BACKENDS, help="aligner for the realignments (default: the device's; see docs/alignment.md)")
    add_common(p)
    p.set_defaults(func=cmd_align_flat_start)

    p = add_verb(sub, "align", "alignments into OUT_DIR: Kaldi ali.{ark,scp}, word/phone CTM, a Praat TextGrid per recording")
    p.add_argument("cuts", type=Path, help="cuts with features and transcripts")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("model_dir", type=Path, help="tree, trans.pkl and final.pt (e.g. exp/mono_flat)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="kaldi (C++ aligner, beams), k2 or torch (exact FSA engines); auto: the device's default")
    add_common(p)
    p.set_defaults(func=cmd_align)

    p = add_verb(sub, "align-quality", "word/phone boundary errors against reference times: ALIGN_DIR/quality.json")
    p.add_argument("cuts", type=Path, help="cuts whose supervisions carry reference alignments (synth)")
    p.add_argument("align_dir", type=Path, help="output of asrhybrid align")
    p.set_defaults(func=cmd_align_quality, log_file=None, force=False)

    p = add_verb(sub, "build-tree", "stage 5: senone tree from CI alignments into OUT_DIR: tree, trans.pkl, ali.ark, ali_pdf.ark, tree.json")
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("ci_dir", type=Path, help="the flat-start dir (tree, trans.pkl, ali.ark)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats of the training features")
    p.add_argument("--num-leaves", type=int, default=500)
    p.add_argument("--min-count", type=float, default=100.0, help="frames each side of a split must keep")
    p.add_argument("--questions", default="auto", choices=["auto", "arpabet", "both"],
                   help="automatic phone clustering (any phone set), ARPAbet classes, or both")
    add_common(p)
    p.set_defaults(func=cmd_build_tree)

    p = add_verb(sub, "train-am", "stage 6: a hybrid acoustic model on the tree's senone alignments: EXP_DIR/final.pt "
                                  "(model, priors), epoch-N.pt, train.json")
    p.add_argument("cuts", type=Path, help="training cuts with features")
    p.add_argument("tree_dir", type=Path, help="stage 5's dir (trans.pkl, ali_pdf.{ark,scp})")
    p.add_argument("lang_dir", type=Path)
    p.add_argument("exp_dir", type=Path)
    p.add_argument("--cmvn", type=Path, required=True, help="global CMVN stats of the training features")
    p.add_argument("--system", default="lstmp", choices=["dnn", "lstmp", "fast_slow", "slow"])
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="TrainConfig field, e.g. epochs=10")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. cells=320")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N; data-parallel: "
                                                   "torchrun --nproc-per-node N -m asrhybrid train-am ...")
    add_common(p)
    p.set_defaults(func=cmd_train_am)

    p = add_verb(sub, "align-am", "realign with a trained hybrid AM through the tree's training graphs (Kaldi's "
                                  "steps/nnet3/align.sh): OUT_DIR/ali.{ark,scp}, ali_pdf.{ark,scp}, {word,phone}.ctm, "
                                  "textgrid/ and the tree's model (so OUT_DIR is a tree dir for train-am)")
    p.add_argument("cuts", type=Path)
    p.add_argument("lang_dir", type=Path)
    p.add_argument("tree_dir", type=Path, help="the tree dir the AM was trained on (tree, trans.pkl)")
    p.add_argument("am_dir", type=Path, help="train-am's EXP_DIR (final.pt)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    add_common(p)
    p.set_defaults(func=cmd_align_am)

    p = add_verb(sub, "compute-loglikes", "scaled log-likelihoods acwt x (log posterior - prior_scale x log prior) "
                                          "per utterance: OUT_ARK (+ .scp), a Kaldi float-matrix table")
    p.add_argument("cuts", type=Path)
    p.add_argument("exp_dir", type=Path, help="a trained system (train-am's EXP_DIR)")
    p.add_argument("out_ark", type=Path)
    p.add_argument("--acwt", type=float, default=1.0)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    add_common(p)
    p.set_defaults(func=cmd_compute_loglikes)

    p = add_verb(sub, "plot-alignment", "PNG of the aligned words over each utterance's energy envelope")
    p.add_argument("cuts", type=Path)
    p.add_argument("word_ctm", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--max-utterances", type=int, default=30)
    p.set_defaults(func=cmd_plot_alignment, log_file=None, force=False)

    p = add_verb(sub, "check-install", "import every dependency in a fresh process and print the versions (writes nothing)")
    p.set_defaults(func=cmd_check_install, log_file=None)


