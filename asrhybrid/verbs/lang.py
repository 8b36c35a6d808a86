"""Stages 2-3 verbs: the dict and lang dirs, the n-gram LMs (and G.fst) and the end-to-end systems' tokens."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from lhotse import load_manifest

from asrhybrid.errors import DataError
from asrhybrid.lang.dicts import prepare_dict
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.lang.prepare_lang import prepare_lang
from asrhybrid.lm.bpe import train_tokens
from asrhybrid.lm.train import arpa_to_g, train_lm
from asrhybrid.outputs import atomic_output, run_once, write_text_atomic
from asrhybrid.verbs.common import add_common, add_verb

log = logging.getLogger("asrhybrid")


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
            log.warning(
                "%d transcript word(s) are not in the %s lexicon and map to the OOV word: %s",
                len(oov),
                args.lexicon,
                " ".join(oov[:20]) + (" ..." if len(oov) > 20 else ""),
            )

    run_once(args.dict_dir, "prepare-dict", params, args.force, work, inputs)


def cmd_prepare_lang(args: argparse.Namespace) -> None:
    params = {"oov": args.oov, "position_dependent": not args.no_position_dependent, "sil_prob": args.sil_prob}
    run_once(
        args.lang_dir,
        "prepare-lang",
        params,
        args.force,
        lambda done: prepare_lang(
            args.dict_dir,
            args.lang_dir,
            args.oov,
            sil_prob=args.sil_prob,
            position_dependent_phones=not args.no_position_dependent,
        ),
        inputs={"dict": args.dict_dir},
    )


def cmd_train_lm(args: argparse.Namespace) -> None:

    params = {"order": args.order, "prune": args.prune, "binary": args.binary, "oov": args.oov}
    inputs = {**text_inputs(args.text), **text_inputs(args.dev, "dev"), **({"words": args.words} if args.words else {})}

    def work(done):
        texts, dev = read_texts(args.text), read_texts(args.dev)
        words = set(read_symbol_table(args.words)) if args.words else None
        summary = train_lm(
            texts,
            args.out_dir,
            args.name,
            args.order,
            words=words,
            oov_word=args.oov,
            prune=args.prune,
            binary=args.binary,
            dev_lines=dev,
            source=" ".join(map(str, args.text)),
        )
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
    run_once(
        args.out_dir,
        f"train-bpe-{args.model_type}",
        params,
        args.force,
        lambda done: train_tokens(read_texts(args.text), args.out_dir, args.vocab_size, args.model_type),
        text_inputs(args.text),
    )


def add_lang_verbs(sub) -> None:
    """Stages 2-3's verbs on ``sub`` (argparse subparsers)."""

    p = add_verb(
        sub, "prepare-dict", "stage 2: a Kaldi dict dir DICT_DIR (lexicon.txt, phone lists) for a corpus's words"
    )
    p.add_argument("dict_dir", type=Path)
    p.add_argument("--lexicon", required=True, help="yesno, cmudict, or a Kaldi dict dir to copy")
    p.add_argument(
        "--text", type=Path, nargs="+", required=True, help="transcripts: supervisions manifests or text files"
    )
    p.add_argument("--no-stress", action="store_true", help="strip CMUdict's stress marks")
    add_common(p)
    p.set_defaults(func=cmd_prepare_dict)

    p = add_verb(
        sub,
        "prepare-lang",
        "stage 2: Kaldi's prepare_lang.sh into LANG_DIR (phones, words, topo, L.fst, L_disambig.fst)",
    )
    p.add_argument("dict_dir", type=Path)
    p.add_argument("lang_dir", type=Path)
    p.add_argument("--oov", required=True, help="the word OOVs map to (e.g. <UNK>)")
    p.add_argument("--no-position-dependent", action="store_true", help="no _B/_E/_I/_S word-position phones")
    p.add_argument("--sil-prob", type=float, default=0.5)
    add_common(p)
    p.set_defaults(func=cmd_prepare_lang)

    p = add_verb(
        sub,
        "train-lm",
        "stage 3: an n-gram LM with KenLM's lmplz: OUT_DIR/NAME.arpa (and .bin), NAME.json (perplexity)",
    )
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

    p = add_verb(
        sub, "train-bpe", "stage 3: SentencePiece tokens for end-to-end models: OUT_DIR/<type>.model, tokens.txt"
    )
    p.add_argument("text", type=Path, nargs="+")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--model-type", default="bpe", choices=["bpe", "unigram", "char"])
    add_common(p)
    p.set_defaults(func=cmd_train_bpe)
