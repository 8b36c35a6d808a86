"""Word error rates the way Kaldi and sclite count them, through kaldialign (Kaldi's own edit-distance code).

One place formats the results (STYLE.md): Kaldi's compute-wer lines::

    %WER 17.39 [ 8 / 46, 1 ins, 0 del, 7 sub ] exp/lstmp/decode_test/wer_11_0.5
    %SER 50.00 [ 1 / 2 ]
    Scored 2 sentences, 0 not present in hyp.

and icefall's per-system files: ``recogs-*.txt`` (ref and hyp per utterance)
and ``errs-*.txt`` (the totals, then every utterance's alignment with errors
marked ``(ref->hyp)``, then the substitution, deletion and insertion
counts). Edit costs are Kaldi's (unit; ties broken as Kaldi breaks them) by
default, sclite's (insertion 3, deletion 3, substitution 4) with
``sclite=True``; both report the same counts on the same alignment.

References in sclite's trn layout may hold alternations ``{ A / B / @ }``
(``@``: the word may be left out); each is scored as the alternative that
gives the fewest errors, as sclite does.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import kaldialign

EPS = "*"


@dataclass
class ErrorCounts:
    """Totals over utterances: reference words, insertions, deletions, substitutions, sentences."""

    ref_words: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0
    sentences: int = 0
    sentence_errors: int = 0
    missing: int = 0  # references with no hypothesis (scored as all deleted, marked [PARTIAL])

    @property
    def errors(self) -> int:
        return self.ins + self.dels + self.subs

    @property
    def correct(self) -> int:
        return self.ref_words - self.dels - self.subs

    @property
    def wer(self) -> float:
        """Percent; Kaldi's convention for no reference words: 0 without errors, else infinite."""
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return 100.0 * self.errors / self.ref_words

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def wer_line(self, label: str = "") -> str:
        """Kaldi's ``%WER`` line (compute-wer: two decimals, ``[PARTIAL]`` when hypotheses are missing)."""
        partial = " [PARTIAL]" if self.missing else ""
        line = (
            f"%WER {self.wer:.2f} [ {self.errors} / {self.ref_words}, {self.ins} ins, {self.dels} del, "
            f"{self.subs} sub ]{partial}"
        )
        return f"{line} {label}".rstrip()

    def ser_line(self) -> str:
        ser = 100.0 * self.sentence_errors / self.sentences if self.sentences else 0.0
        return f"%SER {ser:.2f} [ {self.sentence_errors} / {self.sentences} ]"


@dataclass
class UtteranceScore:
    utt: str
    alignment: list[tuple[str, str]]  # (ref word or EPS, hyp word or EPS)
    counts: ErrorCounts


def align_words(
    ref: Sequence[str], hyp: Sequence[str], sclite: bool = False
) -> tuple[list[tuple[str, str]], ErrorCounts]:
    """Kaldi's alignment of two word sequences and its counts (one utterance)."""
    alignment = kaldialign.align(list(ref), list(hyp), EPS, sclite_mode=sclite) if (ref or hyp) else []
    ins = sum(r == EPS for r, _ in alignment)
    dels = sum(h == EPS for _, h in alignment)
    subs = sum(r != h and EPS not in (r, h) for r, h in alignment)
    return alignment, ErrorCounts(len(ref), ins, dels, subs, 1, int(ins + dels + subs > 0))


_ALTERNATION = re.compile(r"\{([^{}]*)\}")


def expand_alternations(words: str) -> list[list[str]]:
    """Every reading of a reference with ``{ A / B / @ }`` alternations (``@``: nothing)."""
    parts, pos = [], 0
    for m in _ALTERNATION.finditer(words):
        parts.append([words[pos : m.start()].split()])
        parts.append([[] if alt.strip() == "@" else alt.split() for alt in m.group(1).split("/")])
        pos = m.end()
    parts.append([words[pos:].split()])
    return [[w for chunk in choice for w in chunk] for choice in itertools.product(*parts)]


def score_utterance(utt: str, ref: str, hyp: Sequence[str] | None, sclite: bool = False) -> UtteranceScore:
    """One utterance; ``hyp`` None is a missing hypothesis (every reference word deleted)."""
    best = None
    for reading in expand_alternations(ref):
        alignment, counts = align_words(reading, list(hyp or []), sclite)
        if best is None or counts.errors < best[1].errors:
            best = (alignment, counts)
    alignment, counts = best
    if hyp is None:
        counts.missing = 1
    return UtteranceScore(utt, alignment, counts)


def score(
    refs: Mapping[str, str], hyps: Mapping[str, Sequence[str]], sclite: bool = False
) -> tuple[ErrorCounts, list[UtteranceScore]]:
    """Totals and per-utterance scores over the references (in their order); hypotheses for utterances with
    no reference are an error (they cannot be scored, and silently dropping them hides a mismatch)."""
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"{len(extra)} hypothesis utterance(s) have no reference, e.g. {extra[:3]}")
    scores = [score_utterance(utt, ref, hyps.get(utt), sclite) for utt, ref in refs.items()]
    total = sum((s.counts for s in scores), ErrorCounts())
    return total, scores


def read_text(path: Path | str) -> dict[str, str]:
    """A Kaldi ``text`` file (``utt-id word word ...``); the order kept."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        utt, _, words = line.strip().partition(" ")
        if utt in out:
            raise ValueError(f"{path}:{n}: utterance '{utt}' appears twice")
        out[utt] = " ".join(words.split())
    return out


def read_trn(path: Path | str, fold_case: bool = True) -> dict[str, str]:
    """sclite's trn layout (``words ... (utt-id)``); words and ids case-folded as sclite does by default."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";;"):
            continue
        m = re.match(r"^(.*)\(([^()]*)\)\s*$", line)
        if not m:
            raise ValueError(f"{path}:{n}: no '(utt-id)' at the end of the line")
        words = " ".join(m.group(1).split())
        utt = m.group(2).strip()
        out[utt.upper() if fold_case else utt] = words.upper() if fold_case else words
    return out


def recogs_text(scores: Iterable[UtteranceScore]) -> str:
    """icefall's recogs-*.txt: ``utt:\\tref=[...]`` and ``utt:\\thyp=[...]`` per utterance."""
    lines = []
    for s in sorted(scores, key=lambda s: s.utt):
        ref = [r for r, _ in s.alignment if r != EPS]
        hyp = [h for _, h in s.alignment if h != EPS]
        lines += [f"{s.utt}:\tref={ref}", f"{s.utt}:\thyp={hyp}"]
    return "\n".join(lines) + "\n"


def errs_text(total: ErrorCounts, scores: list[UtteranceScore], label: str = "") -> str:
    """icefall's errs-*.txt: totals, per-utterance alignments (errors as ``(ref->hyp)``), then error counts."""
    subs, dels, ins = Counter(), Counter(), Counter()
    lines = [
        total.wer_line(label),
        total.ser_line(),
        f"Errors: {total.ins} insertions, {total.dels} deletions, {total.subs} substitutions, over "
        f"{total.ref_words} reference words ({total.correct} correct)",
        "",
        "PER-UTT DETAILS: corr or (ref->hyp)",
    ]
    for s in sorted(scores, key=lambda s: s.utt):
        words = []
        for r, h in s.alignment:
            if r == h:
                words.append(r)
            else:
                words.append(f"({r}->{h})")
                (ins if r == EPS else dels if h == EPS else subs)[
                    (r, h) if EPS not in (r, h) else (h if r == EPS else r)
                ] += 1
        lines.append(f"{s.utt}:\t{' '.join(words)}")
    lines += ["", "SUBSTITUTIONS: count ref -> hyp"]
    lines += [f"{n}   {r} -> {h}" for (r, h), n in sorted(subs.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines += ["", "DELETIONS: count ref"] + [
        f"{n}   {w}" for w, n in sorted(dels.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    lines += ["", "INSERTIONS: count hyp"] + [
        f"{n}   {w}" for w, n in sorted(ins.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    return "\n".join(lines) + "\n"
