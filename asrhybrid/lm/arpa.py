"""ARPA back-off n-gram models: a checking reader and an exact scorer.

The reader follows Kaldi's arpa-file-parser: text before ``\\data\\`` is
ignored, section headers may carry trailing whitespace, tabs and spaces both
separate fields. Every problem (a count that does not match, a line with too
few fields, a probability that is not a number, no ``<s>`` or ``</s>``) is
reported with its line number. The scorer is the textbook back-off recursion
(the reference our lattice rescoring and KenLM are checked against):

    log P(w | h) = log p(h w)                      if the n-gram h w is listed
                 = backoff(h) + log P(w | h[1:])   otherwise
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from asrhybrid.errors import DataError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


@dataclass
class ArpaModel:
    order: int
    # n-gram tuple -> (log10 prob, log10 backoff)
    ngrams: dict[tuple[str, ...], tuple[float, float]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    @property
    def vocabulary(self) -> set[str]:
        return {ng[0] for ng in self.ngrams if len(ng) == 1}

    def log10_prob(self, word: str, history: tuple[str, ...]) -> tuple[float, int]:
        """(log10 P(word | history), length of the n-gram matched).

        An OOV scores as ``<unk>`` when the model has it, else as a unigram of
        log10 prob -100, KenLM's convention (the back-offs still apply).
        """
        history = history[max(0, len(history) - (self.order - 1)) :] if self.order > 1 else ()
        if (word,) not in self.ngrams and (UNK,) in self.ngrams:
            word = UNK
        backoff = 0.0
        for start in range(len(history) + 1):
            context = history[start:]
            entry = self.ngrams.get(context + (word,))
            if entry is None and not context:
                entry = (-100.0, 0.0)  # an OOV with no <unk> in the model
            if entry is not None:
                return backoff + entry[0], len(context) + 1
            backoff += self.ngrams.get(context, (0.0, 0.0))[1]
        raise AssertionError("unreachable")

    def sentence_log10(self, words: list[str], bos: bool = True, eos: bool = True) -> float:
        """log10 P(words [</s>] | <s>) as KenLM's ``Model.score``."""
        history: tuple[str, ...] = (BOS,) if bos else ()
        total = 0.0
        has_unk = (UNK,) in self.ngrams
        for w in words + ([EOS] if eos else []):
            lp, _ = self.log10_prob(w, history)
            total += lp
            # An OOV continues as <unk> (its back-off applies to the next word, as in KenLM).
            history = history + (w if not has_unk or (w,) in self.ngrams else UNK,)
        return total


def read_arpa(path: Path | str) -> ArpaModel:
    """Read and check an ARPA file; raises DataError naming every bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path} not found (asrhybrid train-lm writes ARPA LMs)"])
    problems: list[str] = []
    model = ArpaModel(order=0)
    section = None  # None before \data\, 0 in \data\, n in \n-grams:
    seen_end = False
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError([f"{path}: not valid UTF-8 (byte {e.start})"]) from None
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line == "\\data\\":
            section = 0
            continue
        if section is None:
            continue  # free text before \data\ (Kaldi ignores it)
        if line == "\\end\\":
            seen_end = True
            break
        if line.startswith("\\") and line.endswith("-grams:"):
            try:
                section = int(line[1 : -len("-grams:")])
            except ValueError:
                problems.append(f"{path}:{lineno}: bad section header '{line}'")
            continue
        if section == 0:
            if not line.startswith("ngram "):
                problems.append(f"{path}:{lineno}: expected 'ngram N=COUNT' in \\data\\, got '{line}'")
                continue
            try:
                n, count = line[len("ngram ") :].split("=")
                model.counts[int(n)] = int(count)
            except ValueError:
                problems.append(f"{path}:{lineno}: bad count line '{line}'")
            continue
        fields = line.split()
        n = section
        if len(fields) < n + 1 or len(fields) > n + 2:
            problems.append(
                f"{path}:{lineno}: a {n}-gram line needs a log-prob, {n} word(s) and an optional back-off: '{line}'"
            )
            continue
        try:
            prob = float(fields[0])
            backoff = float(fields[n + 1]) if len(fields) == n + 2 else 0.0
        except ValueError:
            problems.append(f"{path}:{lineno}: not a number in '{line}'")
            continue
        if math.isnan(prob) or prob > 0:
            problems.append(f"{path}:{lineno}: log10 probability {prob} is not <= 0")
            continue
        model.ngrams[tuple(fields[1 : n + 1])] = (prob, backoff)
    if section is None:
        problems.append(f"{path}: no \\data\\ section: not an ARPA file")
    elif not seen_end:
        problems.append(f"{path}: no \\end\\ line: the file is truncated")
    if not problems:
        model.order = max(model.counts) if model.counts else 0
        found: dict[int, int] = {}
        for ng in model.ngrams:
            found[len(ng)] = found.get(len(ng), 0) + 1
        for n, count in sorted(model.counts.items()):
            if found.get(n, 0) != count:
                problems.append(f"{path}: \\data\\ says ngram {n}={count} but the file lists {found.get(n, 0)}")
        for symbol in (BOS, EOS):
            if (symbol,) not in model.ngrams:
                problems.append(f"{path}: no {symbol} unigram (every ARPA LM needs {BOS} and {EOS})")
    if problems:
        raise DataError(problems, str(path))
    return model
