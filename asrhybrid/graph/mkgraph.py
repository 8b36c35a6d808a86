"""Kaldi's utils/mkgraph.sh in Python: HCLG = H o C o L o G for a model dir (asrhybrid.hmm: the HMM
``topo``, the decision tree and the transition model; the monophone one of ``init_mono_model`` or the
senone tree of stage 5).

The graph recipe (mkgraph.sh, 2019):
    LG   = minimize_encoded(determinize_star_log(L_disambig o G))
    CLG  = compose_context(LG)           # context width/position from the tree
    Ha   = get_h_transducer(CLG's ilabels, tree, transition model)
    HCLGa = minimize_encoded(rmepsilon(remove disambiguation tids(determinize_star_log(Ha o CLG))))
    HCLG = add_self_loops(HCLGa, self_loop_scale=0.1, reorder)
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from asrhybrid.errors import DataError
from asrhybrid.fsa.k2_engine import available as k2_available
from asrhybrid.graph.k2graph import write_k2_graph
from asrhybrid.hmm import MODEL_FILES, load_model
from asrhybrid.kaldi_wrappers import kaldifst, khg
from asrhybrid.lang.io import read_int_list, read_symbol_table
from asrhybrid.outputs import atomic_output

log = logging.getLogger(__name__)


def remove_input_symbols(fst, symbols: list[int], num_labels: int):
    """Kaldi's fstrmsymbols: ``symbols`` on the input side become epsilon.

    Done as a composition with a one-state transducer (eps:d for each removed
    d, t:t for the others), which runs in C++; kaldifst exposes no relabelling.
    """
    removed = set(symbols)
    relabel = kaldifst.StdVectorFst()
    s = relabel.add_state()
    relabel.start = s
    relabel.set_final(s, 0.0)
    for label in range(1, num_labels + 1):
        relabel.add_arc(s, kaldifst.StdArc(0 if label in removed else label, label, 0.0, s))
    kaldifst.arcsort(relabel, sort_type="olabel")
    return kaldifst.StdVectorFst(kaldifst.compose(relabel, fst))


def count_arcs(fst) -> int:
    return sum(fst.num_arcs(s) for s in range(fst.num_states))


def make_hclg(lang_dir: Path, G, tree, trans_model, self_loop_scale: float = 0.1, transition_scale: float = 1.0):
    """HCLG (a StdVectorFst) from a lang dir's L_disambig, G, a tree and a transition model."""
    L = kaldifst.StdVectorFst.read(str(lang_dir / "L_disambig.fst"))
    disambig_phones = read_int_list(lang_dir / "phones" / "disambig.int")

    LG = kaldifst.StdVectorFst(kaldifst.compose(L, G))
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)

    CLG, ilabels = kaldifst.compose_context(
        disambig_syms=disambig_phones, context_width=tree.context_width, central_position=tree.central_position, ifst=LG
    )
    kaldifst.arcsort(CLG, sort_type="ilabel")
    Ha, disambig_tids = khg.get_h_transducer(
        ilabel_info=ilabels,
        ctx_dep=tree,
        trans_model=trans_model,
        config=khg.HTransducerConfig(transition_scale=transition_scale),
    )
    kaldifst.arcsort(Ha, sort_type="olabel")
    HCLGa = kaldifst.StdVectorFst(kaldifst.compose(Ha, CLG))
    kaldifst.determinize_star(HCLGa, use_log=True)
    HCLGa = remove_input_symbols(HCLGa, disambig_tids, max([trans_model.num_transition_ids, *disambig_tids]))
    kaldifst.rmepsilon(HCLGa)
    kaldifst.minimize_encoded(HCLGa)
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, reorder=True, trans_model=trans_model, ifst=HCLGa)
    kaldifst.arcsort(HCLG, sort_type="ilabel")
    return HCLG


def load_hclg(graph_dir: Path | str):
    """HCLG as a StdConstFst (Kaldi's decoders run 10-30% faster on it than on a VectorFst)."""
    return kaldifst.StdConstFst(kaldifst.StdVectorFst.read(str(Path(graph_dir) / "HCLG.fst")))


def unreachable_words(G, words: dict[str, int]) -> list[str]:
    """Words of words.txt that G never outputs, so HCLG cannot (L covers every word)."""
    out = {arc.olabel for s in range(G.num_states) for arc in kaldifst.ArcIterator(G, s)}
    return sorted(w for w, i in words.items() if i not in out and w not in ("<eps>", "#0", "<s>", "</s>"))


def mkgraph(
    lang_dir: Path | str,
    model_dir: Path | str,
    graph_dir: Path | str,
    g_fst: Path | str | None = None,
    self_loop_scale: float = 0.1,
) -> dict:
    """Write ``graph_dir/HCLG.fst`` (a VectorFst), ``words.txt``, ``phones.txt``, ``phones/``, the model's files
    and, where k2 is installed, HCLG's k2 form (:mod:`asrhybrid.graph.k2graph`); return states, arcs, seconds."""
    lang_dir, model_dir, graph_dir = Path(lang_dir), Path(model_dir), Path(graph_dir)
    g_fst = Path(g_fst) if g_fst else lang_dir / "G.fst"
    if not g_fst.is_file():
        raise DataError([f"{g_fst} not found (asrhybrid arpa2fst ARPA WORDS G makes it)"])
    tree, trans_model = load_model(model_dir)
    start = time.perf_counter()
    G = kaldifst.StdVectorFst.read(str(g_fst))
    HCLG = make_hclg(lang_dir, G, tree, trans_model, self_loop_scale)
    seconds = time.perf_counter() - start
    missing = unreachable_words(G, read_symbol_table(lang_dir / "words.txt"))
    if missing:
        log.warning(
            "%d word(s) of words.txt cannot be output by HCLG (not in G?): %s", len(missing), " ".join(missing[:20])
        )

    graph_dir.mkdir(parents=True, exist_ok=True)
    # Written as a VectorFst: kaldifst 1.7.17 writes ConstFst files but cannot read them back
    # ("Unknown FST type const"); decoding converts to StdConstFst in memory (load_hclg).
    with atomic_output(graph_dir / "HCLG.fst") as tmp:
        HCLG.write(str(tmp))
    for name in ("words.txt", "phones.txt"):
        shutil.copyfile(lang_dir / name, graph_dir / name)
    for name in MODEL_FILES:  # the model beside its graph: a graph dir decodes by itself
        shutil.copyfile(model_dir / name, graph_dir / name)
    if k2_available():
        write_k2_graph(graph_dir, HCLG, trans_model)
    (graph_dir / "phones").mkdir(exist_ok=True)
    for p in (lang_dir / "phones").glob("*"):
        shutil.copyfile(p, graph_dir / "phones" / p.name)
    stats = {
        "states": HCLG.num_states,
        "arcs": count_arcs(HCLG),
        "seconds": round(seconds, 3),
        "unreachable_words": missing,
    }
    log.info(
        "HCLG %s: %d states, %d arcs, built in %.2f s", graph_dir / "HCLG.fst", stats["states"], stats["arcs"], seconds
    )
    return stats
