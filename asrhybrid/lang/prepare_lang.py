"""Kaldi's utils/prepare_lang.sh in Python: a dict dir in, a ``data/lang`` dir out.

The outputs are Kaldi's, file for file: ``phones.txt``, ``words.txt``,
``oov.{txt,int}``, ``topo``, ``phones/`` (silence, nonsilence,
optional_silence, disambig, context_indep, sets, roots, extra_questions,
word_boundary, align_lexicon, wdisambig* in their .txt/.int/.csl forms),
``L.fst`` and ``L_disambig.fst`` (binary OpenFst, as fstcompile writes them).
The orderings, the disambiguation rules of add_lex_disambig.pl and the
lexicon FST of make_lexicon_fst.pl are reproduced so that Kaldi tools and
Kaldi-built models read our lang dirs unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from asrhybrid.errors import DataError
from asrhybrid.kaldi_wrappers import kaldifst
from asrhybrid.lang.lexicon import Lexicon, read_lexicon
from asrhybrid.outputs import atomic_output, write_text_atomic

log = logging.getLogger(__name__)

POSITIONS = ("_B", "_E", "_I", "_S")


@dataclass
class DictDir:
    lexicon: Lexicon
    silence_sets: list[list[str]]
    nonsilence_sets: list[list[str]]
    optional_silence: str
    extra_questions: list[list[str]]


def _read_phone_sets(path: Path, required: bool = True) -> list[list[str]]:
    if not path.is_file():
        if required:
            raise DataError([f"{path} not found (a Kaldi dict dir needs it)"])
        return []
    return [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_dict_dir(dict_dir: Path) -> DictDir:
    """Read and check a Kaldi dict dir; every problem names its file and line."""
    if (dict_dir / "lexiconp.txt").is_file():
        lexicon = read_lexicon(dict_dir / "lexiconp.txt", with_probs=True)
    elif (dict_dir / "lexicon.txt").is_file():
        lexicon = read_lexicon(dict_dir / "lexicon.txt")
    else:
        raise DataError([f"{dict_dir}: neither lexicon.txt nor lexiconp.txt"])
    silence = _read_phone_sets(dict_dir / "silence_phones.txt")
    nonsilence = _read_phone_sets(dict_dir / "nonsilence_phones.txt")
    optional = _read_phone_sets(dict_dir / "optional_silence.txt")
    extra = _read_phone_sets(dict_dir / "extra_questions.txt", required=False)

    problems = []
    known: dict[str, str] = {}
    for name, sets in (("silence_phones.txt", silence), ("nonsilence_phones.txt", nonsilence)):
        for phone in (p for s in sets for p in s):
            if phone in known:
                problems.append(f"{dict_dir / name}: phone '{phone}' is also in {known[phone]}")
            elif phone.startswith("#") or phone in ("<eps>",) or any(phone.endswith(s) for s in POSITIONS):
                problems.append(
                    f"{dict_dir / name}: phone '{phone}' is reserved (disambiguation, <eps>, or a _B/_E/_I/_S suffix)"
                )
            known[phone] = name
    if len(optional) != 1 or len(optional[0]) != 1 or optional[0][0] not in {p for s in silence for p in s}:
        problems.append(f"{dict_dir / 'optional_silence.txt'}: must hold one phone of silence_phones.txt")
    lexicon_file = "lexiconp.txt" if lexicon.probs is not None else "lexicon.txt"
    for lineno, (word, pron) in enumerate(lexicon.entries, start=1):
        unknown = [p for p in pron if p not in known]
        if unknown:
            problems.append(
                f"{dict_dir / lexicon_file}:{lineno}: word '{word}' uses phone(s) {' '.join(unknown)} "
                "not in silence_phones.txt or nonsilence_phones.txt"
            )
        if word.startswith("#") or word in ("<eps>", "<s>", "</s>"):
            problems.append(f"{dict_dir / lexicon_file}:{lineno}: '{word}' is a reserved word symbol")
    for lineno, q in enumerate(extra, start=1):
        unknown = [p for p in q if p not in known]
        if unknown:
            problems.append(f"{dict_dir / 'extra_questions.txt'}:{lineno}: unknown phone(s) {' '.join(unknown)}")
    if problems:
        raise DataError(problems, str(dict_dir))
    return DictDir(lexicon, silence, nonsilence, optional[0][0], extra)


def position_dependent(pron: list[str]) -> list[str]:
    if len(pron) == 1:
        return [pron[0] + "_S"]
    return [pron[0] + "_B"] + [p + "_I" for p in pron[1:-1]] + [pron[-1] + "_E"]


def add_lex_disambig(prons: list[list[str]]) -> tuple[list[list[str]], int]:
    """Kaldi's add_lex_disambig.pl: ``#k`` after prons that are homophones or prefixes of others.

    Returns the new prons and the highest k used (0 if none).
    """
    count: dict[tuple, int] = {}
    prefixes: set[tuple] = set()
    for pron in prons:
        count[tuple(pron)] = count.get(tuple(pron), 0) + 1
        for n in range(1, len(pron)):
            prefixes.add(tuple(pron[:n]))
    last: dict[tuple, int] = {}
    out, max_disambig = [], 0
    for pron in prons:
        key = tuple(pron)
        if key in prefixes or count[key] > 1:
            last[key] = last.get(key, 0) + 1
            max_disambig = max(max_disambig, last[key])
            pron = pron + [f"#{last[key]}"]
        out.append(pron)
    return out, max_disambig


def make_topo(nonsil_ids: list[int], sil_ids: list[int], nonsil_states: int = 3, sil_states: int = 5) -> str:
    """Kaldi's utils/gen_topo.pl: left-to-right non-silence HMMs, the ergodic-start silence HMM."""
    lines = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsil_ids)), "</ForPhones>"]
    for s in range(nonsil_states):
        lines.append(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {s + 1} 0.25 </State>")
    lines += [f"<State> {nonsil_states} </State>", "</TopologyEntry>"]
    lines += ["<TopologyEntry>", "<ForPhones>", " ".join(map(str, sil_ids)), "</ForPhones>"]
    last = sil_states - 1
    p = 1.0 / (sil_states - 1)
    for s in range(sil_states):
        if s == 0:
            trans = "".join(f"<Transition> {t} {p:g} " for t in range(last))
        elif s < last:
            trans = "".join(f"<Transition> {t} {p:g} " for t in range(1, sil_states))
        else:
            trans = f"<Transition> {s} 0.75 <Transition> {s + 1} 0.25 "
        lines.append(f"<State> {s} <PdfClass> {s} {trans}</State>")
    lines += [f"<State> {sil_states} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(lines) + "\n"


def lexicon_fst_text(
    entries: list[tuple[str, float, list[str]]], sil_prob: float, sil_phone: str, sil_disambig: str | None = None
) -> str:
    """Kaldi's make_lexicon_fst.pl output (OpenFst text), line for line.

    With ``sil_prob`` > 0 an optional silence may follow every word (cost
    -log sil_prob) and start the utterance; ``sil_disambig`` (for L_disambig)
    puts a disambiguation symbol after that silence.
    """
    lines = []
    if sil_prob == 0:
        nextstate = 1
        for word, prob, pron in entries:
            s, out, cost = 0, word, -math.log(prob)
            for i, p in enumerate(pron):
                ns = 0 if i == len(pron) - 1 else nextstate
                if ns:
                    nextstate += 1
                lines.append(f"{s}\t{ns}\t{p}\t{out}\t{cost!r}" if cost else f"{s}\t{ns}\t{p}\t{out}")
                s, out, cost = ns, "<eps>", 0.0
        lines.append("0\t0")
        return "\n".join(lines) + "\n"

    silcost, nosilcost = -math.log(sil_prob), -math.log(1.0 - sil_prob)
    start, loop, sil = 0, 1, 2
    fmt = lambda c: repr(c) if c else None  # noqa: E731  (full precision, as make_lexicon_fst.py prints)

    def arc(s, d, i, o, c=0.0):
        lines.append("\t".join([str(s), str(d), i, o] + ([fmt(c)] if c else [])))

    if sil_disambig is None:
        nextstate = 3
        arc(start, loop, "<eps>", "<eps>", nosilcost)
        arc(start, loop, sil_phone, "<eps>", silcost)
        arc(sil, loop, sil_phone, "<eps>")
    else:
        disambig, nextstate = 3, 4
        arc(start, loop, "<eps>", "<eps>", nosilcost)
        arc(start, disambig, sil_phone, "<eps>", silcost)
        arc(sil, disambig, sil_phone, "<eps>")
        arc(disambig, loop, sil_disambig, "<eps>")
    for word, prob, pron in entries:
        s, out, pron_cost = loop, word, -math.log(prob)
        for i, p in enumerate(pron):
            if i < len(pron) - 1:
                arc(s, nextstate, p, out, pron_cost)
                s, out, pron_cost = nextstate, "<eps>", 0.0
                nextstate += 1
            elif p != sil_phone:  # no optional silence after the silence word
                arc(s, loop, p, out, nosilcost + pron_cost)
                arc(s, sil, p, out, silcost + pron_cost)
            else:
                arc(s, loop, p, out, pron_cost)
    lines.append(f"{loop}\t0")
    return "\n".join(lines) + "\n"


def _write_table(path: Path, symbols: list[str]) -> None:
    write_text_atomic(path, "".join(f"{s} {i}\n" for i, s in enumerate(symbols)))


def _write_phone_list(
    phones_dir: Path, name: str, lines: list[list[str]], ids: dict[str, int], csl: bool = True
) -> None:
    """Kaldi writes each phones/ list as .txt, .int and (for flat lists) .csl."""
    write_text_atomic(phones_dir / f"{name}.txt", "".join(" ".join(l) + "\n" for l in lines))
    write_text_atomic(phones_dir / f"{name}.int", "".join(" ".join(str(ids[p]) for p in l) + "\n" for l in lines))
    if csl:
        write_text_atomic(phones_dir / f"{name}.csl", ":".join(str(ids[l[0]]) for l in lines) + "\n")


def compile_fst(text: str, isymbols: dict[str, int], osymbols: dict[str, int]):
    """fstcompile with symbol tables (states renumbered in order of appearance, as fstcompile does)."""
    numeric = []
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) >= 4:
            f[2], f[3] = str(isymbols[f[2]]), str(osymbols[f[3]])
        numeric.append(" ".join(f))
    return kaldifst.compile(s="\n".join(numeric) + "\n", acceptor=False)


def _write_phone_lists(
    phones_dir: Path, d, expand, silence, nonsilence, disambig, phone_ids, word_ids, position_dependent_phones
):
    """phones/: the phone sets and roots of the tree, the silence/nonsilence/disambiguation lists, the extra
    questions, #0 and the word-boundary table (prepare_lang.sh's phone lists)."""
    sets = [expand(s) for s in d.silence_sets + d.nonsilence_sets]
    _write_phone_list(phones_dir, "sets", sets, phone_ids, csl=False)
    roots = [["shared", "split"] + s for s in sets]
    write_text_atomic(phones_dir / "roots.txt", "".join(" ".join(r) + "\n" for r in roots))
    write_text_atomic(
        phones_dir / "roots.int",
        "".join(" ".join(r[:2] + [str(phone_ids[p]) for p in r[2:]]) + "\n" for r in roots),
    )
    for name, lst in (
        ("silence", silence),
        ("nonsilence", nonsilence),
        ("context_indep", silence),
        ("optional_silence", [d.optional_silence]),
        ("disambig", disambig),
    ):
        _write_phone_list(phones_dir, name, [[p] for p in lst], phone_ids)
    questions = [expand(q) for q in d.extra_questions]
    if position_dependent_phones:
        nonsil_base = [p for s in d.nonsilence_sets for p in s]
        sil_base = [p for s in d.silence_sets for p in s]
        questions += [[p + s for p in nonsil_base] for s in POSITIONS]
        questions += [[p + s for p in sil_base] for s in ("",) + POSITIONS]
    _write_phone_list(phones_dir, "extra_questions", questions, phone_ids, csl=False)
    _write_phone_list(phones_dir, "wdisambig", [["#0"]], phone_ids, csl=False)
    write_text_atomic(phones_dir / "wdisambig_phones.int", f"{phone_ids['#0']}\n")
    write_text_atomic(phones_dir / "wdisambig_words.int", f"{word_ids['#0']}\n")
    if position_dependent_phones:
        kinds = {"_B": "begin", "_E": "end", "_I": "internal", "_S": "singleton"}
        boundary = [(p, kinds.get(p[-2:], "nonword")) for p in silence + nonsilence]
        write_text_atomic(phones_dir / "word_boundary.txt", "".join(f"{p} {k}\n" for p, k in boundary))
        write_text_atomic(phones_dir / "word_boundary.int", "".join(f"{phone_ids[p]} {k}\n" for p, k in boundary))


def _write_align_lexicon(phones_dir: Path, entries, optional_silence: str, phone_ids, word_ids) -> None:
    """phones/align_lexicon.{txt,int}: each word's pronunciations, for word alignments (CTM)."""
    # The optional silence aligns as the word <eps> (Kaldi adds it whatever sil_prob is).
    align = sorted(
        {(w, tuple(pron)) for w, _, pron in entries} | {("<eps>", (optional_silence,))},
        key=lambda e: " ".join((e[0], e[0]) + e[1]).encode("utf-8"),
    )
    write_text_atomic(phones_dir / "align_lexicon.txt", "".join(f"{w} {w} {' '.join(p)}\n" for w, p in align))
    write_text_atomic(
        phones_dir / "align_lexicon.int",
        "".join(
            f"{word_ids.get(w, 0)} {word_ids.get(w, 0)} {' '.join(str(phone_ids[x]) for x in p)}\n" for w, p in align
        ),
    )


def _write_lexicon_fsts(
    lang_dir: Path, entries, disambig_prons, num_disambig, sil_prob, sil_phone, phone_ids, word_ids
):
    """L.fst and L_disambig.fst (with the disambiguation symbols and #0 self-loops); returns L."""
    symbol_ids = {**phone_ids, "<eps>": 0}
    L = compile_fst(lexicon_fst_text(entries, sil_prob, sil_phone), symbol_ids, word_ids)
    kaldifst.arcsort(L, sort_type="olabel")
    with atomic_output(lang_dir / "L.fst") as tmp:
        L.write(str(tmp))
    disambig_entries = [(w, p, pron) for (w, p, _), pron in zip(entries, disambig_prons)]
    L_disambig = compile_fst(
        lexicon_fst_text(disambig_entries, sil_prob, sil_phone, f"#{num_disambig}" if sil_prob > 0 else None),
        symbol_ids,
        word_ids,
    )
    # #0 self-loops where words come out (fstaddselfloops), so G's #0 backoff arcs can pass L.
    kaldifst.add_self_loops(L_disambig, isyms=[phone_ids["#0"]], osyms=[word_ids["#0"]])
    kaldifst.arcsort(L_disambig, sort_type="olabel")
    with atomic_output(lang_dir / "L_disambig.fst") as tmp:
        L_disambig.write(str(tmp))
    return L


def prepare_lang(
    dict_dir: Path | str,
    lang_dir: Path | str,
    oov_word: str,
    position_dependent_phones: bool = True,
    sil_prob: float = 0.5,
) -> Path:
    """Build ``lang_dir`` from a Kaldi dict dir."""
    dict_dir, lang_dir = Path(dict_dir), Path(lang_dir)
    d = read_dict_dir(dict_dir)
    if oov_word not in d.lexicon.words():
        raise DataError([f"{dict_dir}: the OOV word '{oov_word}' is not in the lexicon"])
    suffixes = ("",) + POSITIONS if position_dependent_phones else ("",)
    sil_map = {p: [p + s for s in suffixes] for s_ in d.silence_sets for p in s_}
    nonsil_map = {
        p: [p + s for s in (POSITIONS if position_dependent_phones else ("",))] for s_ in d.nonsilence_sets for p in s_
    }
    phone_map = {**sil_map, **nonsil_map}
    expand = lambda line: [q for p in line for q in phone_map[p]]  # noqa: E731  (utils/apply_map.pl)

    silence = [q for s in d.silence_sets for q in expand(s)]
    nonsilence = [q for s in d.nonsilence_sets for q in expand(s)]
    entries = d.lexicon.with_probs()
    if position_dependent_phones:
        entries = [(w, p, position_dependent(pron)) for w, p, pron in entries]
    disambig_prons, max_disambig = add_lex_disambig([pron for _, _, pron in entries])
    num_disambig = max_disambig + 1  # one more for the silence in L_disambig
    disambig = [f"#{k}" for k in range(num_disambig + 1)]

    phones = ["<eps>"] + silence + nonsilence + disambig
    phone_ids = {p: i for i, p in enumerate(phones)}
    words = sorted({w for w, _, _ in entries}, key=lambda w: w.encode("utf-8"))  # LC_ALL=C sort
    word_list = ["<eps>"] + words + ["#0", "<s>", "</s>"]
    word_ids = {w: i for i, w in enumerate(word_list)}

    # built under a temporary name and swapped in whole: no file of an earlier build survives
    final_dir = lang_dir
    with atomic_output(final_dir) as lang_dir:
        lang_dir.mkdir(parents=True, exist_ok=True)
        phones_dir = lang_dir / "phones"
        phones_dir.mkdir(exist_ok=True)
        _write_table(lang_dir / "phones.txt", phones)
        _write_table(lang_dir / "words.txt", word_list)
        write_text_atomic(lang_dir / "oov.txt", f"{oov_word}\n")
        write_text_atomic(lang_dir / "oov.int", f"{word_ids[oov_word]}\n")

        _write_phone_lists(
            phones_dir, d, expand, silence, nonsilence, disambig, phone_ids, word_ids, position_dependent_phones
        )
        _write_align_lexicon(phones_dir, entries, d.optional_silence, phone_ids, word_ids)

        nonsil_ids = [phone_ids[p] for p in nonsilence]
        sil_ids = [phone_ids[p] for p in silence]
        write_text_atomic(lang_dir / "topo", make_topo(nonsil_ids, sil_ids))

        L = _write_lexicon_fsts(
            lang_dir, entries, disambig_prons, num_disambig, sil_prob, d.optional_silence, phone_ids, word_ids
        )

    log.info(
        "lang %s: %d phones (%d disambiguation symbols), %d words, L %d states",
        final_dir,
        len(silence) + len(nonsilence),
        len(disambig),
        len(words),
        L.num_states,
    )
    return final_dir
