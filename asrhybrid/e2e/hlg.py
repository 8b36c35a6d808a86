"""WFST decoding of CTC output: HLG (icefall's compile_hlg), a graph dir that stage 8's decoder reads.

H is k2's CTC topology over the system's tokens (blank 0); L spells each word of the LM's ``words.txt`` in
the tokens, as a transcript of the word is spelled (:meth:`TokenSet.spell`); G is stage 3's ``G.fst``.
``LG = det(L o G)``, with G's back-off ``#0`` kept as a real symbol through the composition (L has a
``#0:#0`` self-loop, and a token id past the last one for it), so no path is doubled by epsilons matching
epsilons; ``#0`` is then made an epsilon and removed, and ``HLG = H o LG``. A word whose every piece starts
with ``▁`` only at its first needs no other disambiguation symbol: the pieces say where words begin.

A graph dir (``exp/<ctc system>/graph_<lm>/``) holds ``words.txt`` and ``HLG.k2.pt``: ``{"graph": as_dict,
"num_tokens": V}``, HLG with the attributes :mod:`asrhybrid.decode.decoder` reads: ``labels`` (the token
id, the column of the CTC output each arc reads), ``aux_labels`` (words, ragged), ``tids`` (token id + 1
on each arc: what the lattices' alignment strings hold per frame, 1-based as Kaldi's transition ids; -1 on
final arcs) and ``graph_scores`` (the LM's log-probabilities).

The search runs over the log-posteriors at scale 1 (icefall's HLG decoding); the decoder's ``acwt``
divides the acoustic costs written into the lattices (Kaldi chain's ``--post-decode-acwt`` = 1 / acwt), so
that with acwt 0.1 the usual LMWT grid 7..17 of scoring brackets the LM scale of the search.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from asrhybrid.e2e.tokens import UNK, WORD_START, TokenSet
from asrhybrid.errors import DataError
from asrhybrid.fsa.fsa import from_kaldi
from asrhybrid.graph.k2graph import HLG_FILE
from asrhybrid.kaldi_wrappers import kaldifst
from asrhybrid.lang.io import read_symbol_table

log = logging.getLogger(__name__)


def lexicon(tokens, words: dict[str, int]) -> tuple[dict[int, list[int]], list[str]]:
    """(word id -> token ids, the words left out) for the words of ``words.txt`` the tokens spell
    (not <eps>, #N, <s>, </s>, nor a word with a character no piece holds)."""
    spelled, left_out = {}, []
    for word, wid in words.items():
        if wid == 0 or word.startswith("#") or word in ("<s>", "</s>"):
            continue
        ids = tokens.spell(word)
        starts = [tokens.pieces[i].startswith(WORD_START) for i in ids]
        if tokens.unknown_characters(word) or not ids or UNK in ids or not starts[0] or any(starts[1:]):
            left_out.append(word)
            continue
        spelled[wid] = ids
    return spelled, left_out


def lexicon_fsa(spelled: dict[int, list[int]], token_disambig: int, word_disambig: int):
    """L as a k2 transducer (tokens : words) from one loop state, with the ``#0:#0`` self-loop."""
    import k2  # optional: built from source by make setup; the torch FSA engine runs without it

    rows, next_state = [], 1
    for wid, ids in sorted(spelled.items()):
        src = 0
        for k, token in enumerate(ids):
            dst = 0 if k == len(ids) - 1 else next_state
            if dst:
                next_state += 1
            rows.append((src, dst, token, wid if k == 0 else 0))
            src = dst
    rows.append((0, 0, token_disambig, word_disambig))
    final = next_state
    rows.append((0, final, -1, -1))
    rows.sort(key=lambda r: r[0])
    arcs = torch.tensor([[s, d, t, 0] for s, d, t, _ in rows], dtype=torch.int32)
    fsa = k2.Fsa(arcs)
    fsa.aux_labels = torch.tensor([w for *_, w in rows], dtype=torch.int32)
    return fsa


def grammar_fsa(g_fst: Path):
    """G.fst as a k2 transducer: labels are its input words (``#0`` on back-off arcs), aux_labels its outputs."""
    import k2  # optional: built from source by make setup; the torch FSA engine runs without it

    g = from_kaldi(kaldifst.StdVectorFst.read(str(g_fst)), output_labels=True)
    order = torch.argsort(g.src, stable=True)
    arcs = torch.stack(
        [
            g.src[order].to(torch.int32),
            g.dst[order].to(torch.int32),
            g.label[order].to(torch.int32),
            g.score[order].to(torch.float32).view(torch.int32),
        ],
        dim=1,
    ).contiguous()
    fsa = k2.Fsa(arcs)
    fsa.aux_labels = g.aux_label[order].to(torch.int32)
    return fsa


def compile_hlg(tokens, lang_dir: Path):
    """HLG (see the module's doc) for the token set and a lang dir with ``G.fst`` and ``words.txt``;
    returns (HLG, statistics)."""
    import k2  # optional: built from source by make setup; the torch FSA engine runs without it

    start = time.perf_counter()
    words = read_symbol_table(lang_dir / "words.txt")
    if "#0" not in words:
        raise DataError([f"{lang_dir}/words.txt: no #0 (the back-off symbol of G.fst): not a lang dir of format-lm"])
    spelled, left_out = lexicon(tokens, words)
    if not spelled:
        raise DataError([f"{lang_dir}/words.txt: no word can be spelled in the tokens of {tokens.lang_dir}"])
    num_tokens = len(tokens)
    L = k2.arc_sort(lexicon_fsa(spelled, num_tokens, words["#0"]))
    G = k2.arc_sort(grammar_fsa(lang_dir / "G.fst"))
    LG = k2.connect(k2.compose(L, G))
    LG = k2.connect(k2.determinize(LG))
    LG.labels[LG.labels >= num_tokens] = 0
    LG.__dict__["_properties"] = None  # the labels changed under k2's cached properties
    LG.aux_labels.values[LG.aux_labels.values >= words["#0"]] = 0
    LG = k2.connect(k2.remove_epsilon(LG))
    LG.aux_labels = LG.aux_labels.remove_values_eq(0)
    H = k2.ctc_topo(num_tokens - 1)
    HLG = k2.arc_sort(k2.connect(k2.compose(H, k2.arc_sort(LG), inner_labels="tokens")))
    del HLG.tokens
    if HLG.num_arcs == 0:
        raise DataError([f"{lang_dir}: HLG is empty (G accepts no sequence of the words the tokens spell)"])
    labels = HLG.labels
    HLG.tids = torch.where(labels >= 0, labels + 1, -1).to(torch.int32)
    HLG.graph_scores = HLG.scores.detach().clone()
    stats = {
        "states": int(HLG.shape[0]),
        "arcs": int(HLG.num_arcs),
        "words": len(spelled),
        "left_out": left_out,
        "num_tokens": num_tokens,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return HLG, stats


def make_hlg_graph(tokens_dir: Path | str, lang_dir: Path | str, graph_dir: Path | str) -> dict:
    """``graph_dir/HLG.k2.pt`` and ``words.txt`` for a CTC system's tokens and a lang dir with G.fst."""
    lang_dir, graph_dir = Path(lang_dir), Path(graph_dir)
    HLG, stats = compile_hlg(TokenSet(tokens_dir), lang_dir)
    if stats["left_out"]:
        log.warning(
            "%d words of %s/words.txt cannot be spelled in the tokens and are not in HLG: %s",
            len(stats["left_out"]),
            lang_dir,
            " ".join(stats["left_out"][:10]),
        )
    graph_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"graph": HLG.as_dict(), "num_tokens": stats["num_tokens"]}, graph_dir / HLG_FILE)
    (graph_dir / "words.txt").write_bytes((lang_dir / "words.txt").read_bytes())
    return stats
