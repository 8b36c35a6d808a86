"""LM rescoring of saved word lattices, with Kaldi's lmrescore semantics: the first-pass LM's scores out, the new one's in.

A lattice's graph cost is the first-pass G's LM cost plus the lexicon's and
the HMM's transition costs. Rescoring removes the old LM's cost of each word
sequence and adds the new one's, leaving the rest (Kaldi's
``lattice-lmrescore --lm-scale=-1`` with the old G, then ``--lm-scale=1``
with the new). Costs are natural-log, as in Kaldi's G.fst.

- Removing the old LM is exact for both methods: the lattice is expanded by
  the old LM's history state (KenLM's state) as it is read, and every arc
  gets minus the LM's cost of its word given that history (``</s>`` on the
  final weights): Kaldi's composition with a deterministic on-demand back-off LM.
- ``lattice`` (whole-lattice, icefall's method): the result is composed with
  the new LM as a k2 FSA, G.fst (``#0`` back-off arcs made epsilons, matched
  by epsilon self-loops added to the lattice), with k2.intersect_device. As
  in icefall, a back-off arc competes with the explicit n-gram, and the best
  path takes the better of the two (the exact LM takes the explicit one).
- ``nbest``: the ``n`` best unique word sequences (at LM weight
  ``nbest_lmwt``) are scored with KenLM directly from its (binary or ARPA)
  model: no G is expanded, so LMs too big for a G.fst work. The result is a
  lattice of those n paths, so scoring reads it as any other.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import kenlm
import numpy as np
import torch

from asrhybrid.decode.corpus import lattice_files
from asrhybrid.decode.lattice import Arc, WordLattice, paths_lattice, read_kaldi_lattices, write_kaldi_lattices
from asrhybrid.errors import DataError
from asrhybrid.fsa.fsa import from_kaldi
from asrhybrid.jobs import Job, JobsConfig, run_jobs
from asrhybrid.kaldi_wrappers import kaldifst
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.lm.arpa import BOS, EOS, UNK, read_arpa
from asrhybrid.lm.train import arpa_to_g
from asrhybrid.outputs import atomic_output, remove_stale_temporaries, write_text_atomic

LN10 = math.log(10.0)


class KenLmScorer:
    """Natural-log LM costs of words given KenLM states; words are ids of ``words`` (id -> word)."""

    def __init__(self, path: Path | str, words: dict[int, str]):
        path = Path(path)
        if not path.is_file():
            raise DataError([f"{path}: no such LM (an ARPA file or a KenLM binary)"])
        try:
            self.model = kenlm.Model(str(path))
        except Exception as e:  # noqa: BLE001 (kenlm raises OSError and its own types)
            raise DataError([f"{path}: KenLM cannot read it ({e})"]) from None
        self.path, self.words, self._kenlm = path, words, kenlm

    def start(self):
        state = self._kenlm.State()
        self.model.BeginSentenceWrite(state)
        return state

    def step(self, state, word: int):
        """(cost of the word after ``state``, the next state)."""
        return self.step_word(state, self.words[word])

    def step_word(self, state, word: str):
        """:meth:`step` of a word given as text (the end-to-end searches' words)."""
        out = self._kenlm.State()
        log10 = self.model.BaseScore(state, word, out)
        return -log10 * LN10, out

    def end(self, state) -> float:
        out = self._kenlm.State()
        return -self.model.BaseScore(state, "</s>", out) * LN10

    def sentence_cost(self, words: tuple[int, ...]) -> float:
        return -self.model.score(" ".join(self.words[w] for w in words), bos=True, eos=True) * LN10


class ArpaScorer:
    """The same interface over asrhybrid's ARPA reader: for unigram LMs, which KenLM does not load (the
    reader's scores are KenLM's, back-offs and ``<unk>`` alike); states are histories."""

    def __init__(self, path: Path | str, words: dict[int, str]):
        self.path, self.words, self.model = Path(path), words, read_arpa(path)
        self._keep = max(0, self.model.order - 1)

    def start(self):
        return ("<s>",)[: self._keep] if self._keep else ()

    def step(self, state, word: int):
        return self.step_word(state, self.words[word])

    def step_word(self, state, w: str):
        log10, _ = self.model.log10_prob(w, state)
        nxt = (state + (w,))[len(state) + 1 - self._keep :] if self._keep else ()
        return -log10 * LN10, nxt

    def end(self, state) -> float:
        return -self.model.log10_prob("</s>", state)[0] * LN10

    def sentence_cost(self, words: tuple[int, ...]) -> float:
        return -self.model.sentence_log10([self.words[w] for w in words]) * LN10


def open_lm(path: Path | str, words: dict[int, str]):
    """A scorer for an LM file: KenLM (a binary, or an ARPA of order 2 or more), else the ARPA reader."""
    path = Path(path)
    if path.suffix == ".arpa" and _arpa_order(path) < 2:
        return ArpaScorer(path, words)
    return KenLmScorer(path, words)


def _arpa_order(path: Path) -> int:
    if not path.is_file():
        raise DataError([f"{path}: no such LM (an ARPA file or a KenLM binary)"])
    order = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("ngram ") and "=" in line:
                order = max(order, int(line[6:].split("=")[0]))
            elif line.startswith("\\1-grams") or line.startswith("\\end"):
                break
    return order


def check_lm_words(lm: Path, words: dict[int, str]) -> None:
    """An ARPA LM whose words are not all in the lattices' words.txt is a mismatch: an error naming them."""
    if lm.suffix != ".arpa":
        return  # a KenLM binary: its vocabulary is not listed here; unknown lattice words score as <unk>
    known = set(words.values())
    missing = sorted(w for w in read_arpa(lm).vocabulary if w not in known and w not in (BOS, EOS, UNK))
    if missing:
        raise DataError(
            [f"{lm}: word '{w}' is not in the lattices' words.txt" for w in missing[:20]]
            + ([f"... {len(missing) - 20} more"] if len(missing) > 20 else []),
            str(lm),
        )


def apply_lm(lattice: WordLattice, scorer, scale: float) -> WordLattice:
    """The lattice expanded by the LM's history state, with ``scale`` x the LM's cost added to each word arc's
    graph cost (and ``</s>`` to the final weights): exact, and deterministic where the input is."""
    out = lattice.out_arcs()
    start = (0, scorer.start())  # (lattice state, LM state): LM states are hashable (KenLM's State, or a history)
    ids = {start: 0}
    queue, arcs, final = [start], [], {}
    while queue:
        state, lm_state = queue.pop()
        sid = ids[(state, lm_state)]
        if state in lattice.final:
            g, a, t = lattice.final[state]
            final[sid] = (g + scale * scorer.end(lm_state), a, t)
        for arc in out[state]:
            if arc.word:
                cost, nxt_lm = scorer.step(lm_state, arc.word)
            else:
                cost, nxt_lm = 0.0, lm_state
            nxt = (arc.dst, nxt_lm)
            if nxt not in ids:
                ids[nxt] = len(ids)
                queue.append(nxt)
            arcs.append(Arc(sid, ids[nxt], arc.word, arc.graph + scale * cost, arc.acoustic, arc.tids))
    return WordLattice(arcs, final, num_states=len(ids))


# --- whole-lattice rescoring through k2 -----------------------------------------------------


@dataclass
class K2LanguageModel:
    """G.fst as a k2 acceptor over word ids (back-off ``#0`` arcs as epsilons), arc-sorted."""

    fsa: object

    @classmethod
    def from_g_fst(cls, g_fst: Path | str, words: dict[int, str]) -> "K2LanguageModel":
        import k2  # optional: built from source by make setup; the torch FSA engine runs without it

        g = from_kaldi(kaldifst.StdVectorFst.read(str(g_fst)))
        label = g.label.clone()
        disambig = [i for i, w in words.items() if w.startswith("#")]
        if disambig:
            label[label >= min(disambig)] = 0  # #0 and above: back-off arcs become epsilons
        order = torch.argsort(g.src, stable=True)
        arcs = torch.stack(
            [
                g.src[order].to(torch.int32),
                g.dst[order].to(torch.int32),
                label[order].to(torch.int32),
                g.score[order].to(torch.float32).view(torch.int32),
            ],
            dim=1,
        ).contiguous()
        return cls(k2.arc_sort(k2.Fsa(arcs)))


def _to_k2(lattice: WordLattice):
    """The lattice as a k2 acceptor over words (scores 0): ``arc_index`` is each arc's index + 1 in the lattice,
    and a final arc's is minus (its state + 1), which names the final weight it stands for."""
    import k2  # optional: built from source by make setup; the torch FSA engine runs without it

    final_state = lattice.num_states
    rows = [(a.src, a.dst, a.word, i + 1) for i, a in enumerate(lattice.arcs)]
    rows += [(s, final_state, -1, -(s + 1)) for s in sorted(lattice.final)]
    rows.sort(key=lambda r: r[0])
    data = np.array([r[:3] for r in rows], dtype=np.int32).reshape(-1, 3)
    arcs = torch.cat([torch.from_numpy(data), torch.zeros(len(rows), 1, dtype=torch.int32)], dim=1).contiguous()
    fsa = k2.Fsa(arcs)
    fsa.arc_index = torch.tensor([r[3] for r in rows], dtype=torch.int32)
    return fsa


def k2_apply_lm(lattice: WordLattice, lm: K2LanguageModel, scale: float = 1.0) -> WordLattice:
    """Compose with the k2 LM (icefall's whole-lattice rescoring) and add ``scale`` x its cost to the graph costs."""
    import k2  # optional: built from source by make setup; the torch FSA engine runs without it

    if not lattice.final:
        return WordLattice([], {})
    fsa = k2.arc_sort(k2.add_epsilon_self_loops(_to_k2(lattice)))
    composed = k2.intersect_device(
        k2.create_fsa_vec([lm.fsa]), k2.create_fsa_vec([fsa]), torch.zeros(1, dtype=torch.int32), sorted_match_a=True
    )
    composed = k2.top_sort(k2.connect(composed))
    if composed.num_arcs == 0:
        return WordLattice([], {})
    c = composed[0] if len(composed.shape) == 3 else composed
    arcs_np = c.arcs.values().numpy()
    lm_scores = c.scores.detach().to(torch.float64).numpy()
    index = c.arc_index.numpy()
    arcs: list[Arc] = []
    final: dict[int, tuple[float, float, tuple[int, ...]]] = {}
    for (src, dst, label), lm_score, i in zip(arcs_np[:, :3].tolist(), lm_scores.tolist(), index.tolist()):
        old = lattice.arcs[i - 1] if i > 0 else None
        if label == -1:  # a final arc: the lattice's final weight of the state it came from, plus the LM's
            g, a, t = lattice.final[-i - 1]
            final[src] = (g - scale * lm_score, a, t)
            continue
        g, a, t = (old.graph, old.acoustic, old.tids) if old is not None else (0.0, 0.0, ())
        arcs.append(Arc(src, dst, label, g - scale * lm_score, a, t))
    return WordLattice(arcs, final, num_states=c.shape[0])


# --- the two methods over a lattice, and over a decode directory ---------------------------------


def rescore_lattice(lattice: WordLattice, old, new_k2: K2LanguageModel) -> WordLattice:
    """Whole-lattice: old LM out (exact), new LM in through k2."""
    return k2_apply_lm(apply_lm(lattice, old, -1.0), new_k2, 1.0)


def rescore_nbest(lattice: WordLattice, old, new, n: int = 100, nbest_lmwt: float = 10.0) -> WordLattice:
    """n-best: the n best unique word sequences, each with old LM out and new LM in (KenLM, whole sentences)."""
    paths = lattice.nbest(n, lmwt=nbest_lmwt)
    delta = [new.sentence_cost(p.words) - old.sentence_cost(p.words) for p in paths]
    return paths_lattice(paths, delta)


def rescore_decode_dir(
    decode_dir: Path | str,
    old_lm: Path | str,
    new_lm: Path | str,
    out_dir: Path | str,
    method: str = "lattice",
    n: int = 100,
    nbest_lmwt: float = 10.0,
    engine: JobsConfig | None = None,
) -> dict:
    """Rescore every lattice of a decode directory into ``out_dir`` (a decode directory again: lat.N.gz per
    job, words.txt, decode.json with the rescoring's counts). ``new_lm`` for ``lattice`` is an ARPA file
    (compiled to ``out_dir/G.fst`` over words.txt) or a G.fst; for ``nbest`` an ARPA file or a KenLM binary.
    Each lattice archive is a job on ``engine`` (asrhybrid.jobs; logs in ``out_dir/log``)."""

    decode_dir, out_dir, old_lm, new_lm = Path(decode_dir), Path(out_dir), Path(old_lm), Path(new_lm)
    if method not in ("lattice", "nbest"):
        raise ValueError(f"rescoring method '{method}': lattice or nbest")
    words_txt = decode_dir / "words.txt"
    words = {i: w for w, i in read_symbol_table(words_txt).items()}
    for lm in (old_lm, new_lm):
        check_lm_words(lm, words)
    out_dir.mkdir(parents=True, exist_ok=True)
    if method == "lattice" and new_lm.suffix == ".arpa":
        arpa_to_g(new_lm, words_txt, out_dir / "G.fst")
        new_lm = out_dir / "G.fst"
    jobs = [
        Job(
            f"rescore.{path.name.split('.')[1]}",
            rescore_archive,
            {
                "lattices": path,
                "out": out_dir / path.name,
                "words_txt": words_txt,
                "old_lm": old_lm,
                "new_lm": new_lm,
                "method": method,
                "n": n,
                "nbest_lmwt": nbest_lmwt,
            },
        )
        for path in lattice_files(decode_dir)
    ]
    results = run_jobs(jobs, engine or JobsConfig(workers=1), out_dir / "log", desc=f"rescore {out_dir.name}")
    remove_stale_temporaries(out_dir)  # what the attempts of lost workers began
    stats = {
        "method": method,
        "old_lm": str(old_lm),
        "new_lm": str(new_lm),
        "n": n if method == "nbest" else None,
        **{key: sum(results[job.name][key] for job in jobs) for key in ("lattices", "seconds", "arcs_in", "arcs_out")},
    }
    stats["seconds_per_lattice"] = round(stats["seconds"] / max(1, stats["lattices"]), 5)
    source = json.loads((decode_dir / "decode.json").read_text())
    summary = {**source, "rescoring": stats, "rescored_from": str(decode_dir)}
    (out_dir / "words.txt").write_bytes(words_txt.read_bytes())
    for name in decode_dir.glob("best.*.jsonl"):  # the first pass's failures stay counted
        (out_dir / name.name).write_bytes(name.read_bytes())
    write_text_atomic(out_dir / "decode.json", json.dumps(summary, indent=1) + "\n")
    return summary


def rescore_archive(
    lattices: Path, out: Path, words_txt: Path, old_lm: Path, new_lm: Path, method: str, n: int, nbest_lmwt: float
) -> dict:
    """One job of :func:`rescore_decode_dir`: the lattices of one archive into ``out``; returns its counts."""
    words = {i: w for w, i in read_symbol_table(words_txt).items()}
    old = open_lm(old_lm, words)
    if method == "lattice":
        new_k2 = K2LanguageModel.from_g_fst(new_lm, words)

        def rescore(lat):
            return rescore_lattice(lat, old, new_k2)
    else:
        new = open_lm(new_lm, words)

        def rescore(lat):
            return rescore_nbest(lat, old, new, n, nbest_lmwt)

    stats = {"lattices": 0, "seconds": 0.0, "arcs_in": 0, "arcs_out": 0}

    def rescored():
        for utt, lat in read_kaldi_lattices(lattices):
            start = time.perf_counter()
            new_lat = rescore(lat)
            stats["seconds"] += time.perf_counter() - start
            stats["lattices"] += 1
            stats["arcs_in"] += len(lat.arcs)
            stats["arcs_out"] += len(new_lat.arcs)
            yield utt, new_lat

    with atomic_output(out) as tmp:
        write_kaldi_lattices(tmp, rescored())
    return stats
