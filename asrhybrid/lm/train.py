"""N-gram LMs: text preparation, KenLM lmplz estimation, binary models, perplexity, G.fst.

lmplz and build_binary are KenLM's programs, built by ``make setup`` (the PyPI
``kenlm`` module only queries models). lmplz always gets ``-S`` (a memory cap:
without one it took 4.5 GB on a 16 KB text) and ``--discount_fallback`` when
the text is too small for modified Kneser-Ney discounts (retried automatically).
G.fst is Kaldi's arpa2fst through kaldilm, with ``#0`` on back-off arcs.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import kenlm

from asrhybrid.errors import AsrHybridError, DataError
from asrhybrid.kaldi_wrappers import kaldifst, kaldilm
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.lm.arpa import BOS, EOS, UNK, read_arpa
from asrhybrid.outputs import atomic_output, write_text_atomic

log = logging.getLogger(__name__)

RESERVED_WORDS = {"<eps>", BOS, EOS, "#0"}


def kenlm_tool(name: str) -> str:
    """lmplz / build_binary: on PATH or beside the running interpreter (the venv's bin)."""
    path = shutil.which(name) or (
        str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else None
    )
    if path is None:
        raise AsrHybridError(f"KenLM's {name} not found: run `make setup` (it builds lmplz and build_binary)")
    return path


def prepare_lm_text(lines: list[str], words: set[str] | None, oov_word: str | None, source: str) -> list[str]:
    """Check LM training sentences; map words outside ``words`` to ``oov_word`` (counted, logged).

    Raises DataError naming the line for reserved symbols (``<s>``, ``#0``, ...),
    for words when there is no OOV word to map them to, and for an empty text.
    """
    problems, out, oov_count = [], [], 0
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        mapped = []
        for t in tokens:
            if t in RESERVED_WORDS or t.startswith("#"):
                problems.append(f"{source}:{lineno}: '{t}' is a reserved symbol and cannot be an LM word")
            elif words is not None and t not in words:
                if oov_word is None:
                    problems.append(f"{source}:{lineno}: word '{t}' is not in the symbol table")
                else:
                    mapped.append(oov_word)
                    oov_count += 1
                    continue
            mapped.append(t)
        out.append(" ".join(mapped))
    if not out and not problems:
        problems.append(f"{source}: the LM training text is empty")
    if problems:
        raise DataError(problems, source)
    if oov_count:
        log.warning("%s: %d word token(s) not in the vocabulary were mapped to %s", source, oov_count, oov_word)
    return out


def train_arpa(
    text: Path,
    arpa: Path,
    order: int,
    prune: list[int] | None = None,
    memory: str = "20%",
    discount_fallback: bool | None = None,
) -> Path:
    """KenLM lmplz: ``text`` (one sentence a line) to an ARPA file.

    ``prune``: lmplz's --prune thresholds per order (e.g. [0, 0, 1] drops
    singleton trigrams). ``discount_fallback`` None tries without, then with.
    """
    cmd = [kenlm_tool("lmplz"), "-o", str(order), "-S", memory, "-T", str(arpa.parent)]
    if prune:
        cmd += ["--prune", *map(str, prune)]
    attempts = [discount_fallback] if discount_fallback is not None else [False, True]
    for fallback in attempts:
        try:
            with atomic_output(arpa) as tmp, open(text, "rb") as stdin, open(tmp, "wb") as stdout:
                result = subprocess.run(
                    cmd + (["--discount_fallback"] if fallback else []),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                )
                if result.returncode != 0:  # raised inside: the partial ARPA is removed, not renamed into place
                    raise AsrHybridError(
                        f"lmplz failed (exit {result.returncode}) on {text}:\n"
                        f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
                    )
        except AsrHybridError as e:
            if fallback is False and "discount_fallback" in str(e) and len(attempts) > 1:
                log.info("%s is too small for Kneser-Ney discounts; retrying with --discount_fallback", text)
                continue
            raise
        log.info("lmplz -o %d%s: %s", order, " --discount_fallback" if fallback else "", arpa)
        return arpa


def build_binary(arpa: Path, binary: Path) -> Path:
    """KenLM's build_binary (a probing hash model: fast queries for rescoring)."""
    with atomic_output(binary) as tmp:
        result = subprocess.run([kenlm_tool("build_binary"), str(arpa), str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            raise AsrHybridError(f"build_binary failed on {arpa}:\n{result.stderr.strip()[-2000:]}")
    return binary


def perplexity(model_path: Path, sentences: list[str]) -> float:
    """Per-token perplexity with KenLM, </s> counted as a token (as SRILM's ppl)."""
    arpa = read_arpa(model_path) if str(model_path).endswith(".arpa") else None
    if arpa is not None and arpa.order == 1:
        score = lambda s: arpa.sentence_log10(s.split())  # noqa: E731  (KenLM needs order >= 2)
    else:
        score = kenlm.Model(str(model_path)).score
    total, tokens = 0.0, 0
    for s in sentences:
        total += score(s)
        tokens += len(s.split()) + 1
    return 10 ** (-total / max(tokens, 1))


def train_lm(
    text_lines: list[str],
    out_dir: Path,
    name: str,
    order: int,
    words: set[str] | None = None,
    oov_word: str | None = None,
    prune: list[int] | None = None,
    binary: bool = False,
    dev_lines: list[str] | None = None,
    source: str = "LM text",
) -> dict[str, float | str]:
    """Write ``<name>.arpa`` (and ``<name>.bin``) in ``out_dir``; return its summary (perplexity on dev)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = prepare_lm_text(text_lines, words, oov_word, source)
    text = out_dir / f"{name}.text"
    write_text_atomic(text, "".join(line + "\n" for line in lines))
    arpa = train_arpa(text, out_dir / f"{name}.arpa", order, prune)
    summary: dict[str, float | str] = {"arpa": str(arpa), "order": order}
    model_path = arpa
    if binary:
        model_path = build_binary(arpa, out_dir / f"{name}.bin")
        summary["binary"] = str(model_path)
    if dev_lines:
        dev = prepare_lm_text(dev_lines, words, oov_word, "dev text")
        summary["dev_perplexity"] = round(perplexity(model_path, dev), 3)
        log.info("LM %s: perplexity %.2f on %d dev sentences", name, summary["dev_perplexity"], len(dev))
    return summary


def arpa_to_g(arpa: Path, words_txt: Path, g_fst: Path, allowed_oov: tuple[str, ...] = (UNK,)):
    """G.fst from an ARPA LM over words.txt (Kaldi arpa2fst with #0 on back-off arcs).

    The ARPA is checked first (missing <s>/</s>, malformed lines) and every
    word must be in words.txt, except lmplz's own ``<unk>`` whose n-grams
    arpa2fst skips. Returns the FST.
    """
    model = read_arpa(arpa)
    table = read_symbol_table(words_txt)
    missing = sorted(w for w in model.vocabulary if w not in table and w not in allowed_oov and w not in (BOS, EOS))
    if missing:
        raise DataError(
            [f"{arpa}: word '{w}' is not in {words_txt}" for w in missing[:50]]
            + ([f"... {len(missing) - 50} more"] if len(missing) > 50 else []),
            str(arpa),
        )
    text = kaldilm.arpa2fst(
        input_arpa=str(arpa), disambig_symbol="#0", read_symbol_table=str(words_txt), max_arpa_warnings=0
    )
    G = kaldifst.compile(s=text, acceptor=False)
    kaldifst.arcsort(G, sort_type="ilabel")
    with atomic_output(g_fst) as tmp:
        G.write(str(tmp))
    log.info(
        "G %s: %d states from %s (%s)",
        g_fst,
        G.num_states,
        arpa,
        ", ".join(f"{n}-grams {c}" for n, c in sorted(model.counts.items())),
    )
    return G
