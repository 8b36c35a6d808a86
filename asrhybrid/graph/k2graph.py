"""Decoding graphs: HCLG (stage 7, Kaldi's mkgraph.sh) with its k2 form cached beside it.

A graph directory holds ``HCLG.fst`` (OpenFst VectorFst), ``words.txt``,
``phones.txt``, ``phones/``, the model it was built for (``tree``,
``trans.pkl``, ``topo``: a graph dir decodes by itself) and ``HCLG.k2.pt``:
HCLG as a ``k2.Fsa`` (input epsilons removed, arc-sorted) whose labels are
pdf ids (the score column each arc reads), with the attributes ``tids``
(each arc's transition id; -1 on final arcs), ``aux_labels`` (words, ragged)
and ``graph_scores`` (the graph's own log-probabilities, which survive the
intersection beside the acoustic scores).

A CTC system's graph dir (:mod:`asrhybrid.e2e.hlg`) holds ``HLG.k2.pt`` and ``words.txt`` instead: the
same attributes, with token ids for pdf ids; it has no Kaldi model, so Kaldi's decoder cannot be its reference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asrhybrid.errors import DataError
from asrhybrid.fsa.fsa import from_kaldi
from asrhybrid.fsa.k2_engine import to_k2
from asrhybrid.hmm import load_model
from asrhybrid.kaldi_wrappers import kaldifst
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.outputs import atomic_output

log = logging.getLogger(__name__)

K2_GRAPH = "HCLG.k2.pt"
HLG_FILE = "HLG.k2.pt"  # asrhybrid.e2e.hlg's


def k2_graph(hclg_fst, trans_model):
    """The k2 form of a kaldifst HCLG (see the module's doc)."""
    hclg = from_kaldi(hclg_fst, output_labels=True)
    tid_to_pdf = torch.as_tensor(np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64))
    graph = to_k2(hclg, tid_to_pdf).clone()
    arc = graph.arc_id.to(torch.int64)
    graph.tids = torch.where(arc >= 0, hclg.label[arc.clamp(min=0)], -1).to(torch.int32)
    graph.graph_scores = graph.scores.detach().clone()
    del graph.arc_id
    return graph


def write_k2_graph(graph_dir: Path | str, hclg_fst, trans_model) -> Path:
    graph = k2_graph(hclg_fst, trans_model)
    path = Path(graph_dir) / K2_GRAPH
    with atomic_output(path) as tmp:
        torch.save({"graph": graph.as_dict(), "num_pdfs": int(trans_model.num_pdfs)}, tmp)
    return path


@dataclass
class DecodingGraph:
    graph_dir: Path
    fsa: object  # k2.Fsa
    num_pdfs: int
    tid_to_pdf: np.ndarray | None  # per transition id (index 0 unused); None for an HLG
    trans_model: object  # None for an HLG
    words: dict[int, str]
    _on_device: dict = field(default_factory=dict, repr=False)

    def fsa_on(self, device) -> object:
        """The k2 graph on ``device``, copied there once."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.fsa.to(device)
        return self._on_device[key]

    @classmethod
    def load(cls, graph_dir: Path | str) -> "DecodingGraph":
        """The graph of a graph dir (mkgraph's output); the k2 form is made and cached when missing or stale."""
        import k2  # optional: built from source by make setup; the torch FSA engine runs without it

        graph_dir = Path(graph_dir)
        if (graph_dir / HLG_FILE).is_file():
            return cls._load_hlg(graph_dir)
        hclg_path = graph_dir / "HCLG.fst"
        if not hclg_path.is_file():
            raise DataError(
                [
                    f"{hclg_path}: no HCLG.fst (asrhybrid mkgraph LANG_DIR MODEL_DIR {graph_dir} makes it) "
                    f"nor {HLG_FILE} (asrhybrid mkgraph-ctc)"
                ]
            )
        if not (graph_dir / "trans.pkl").is_file():
            raise DataError(
                [f"{graph_dir}: no trans.pkl beside HCLG.fst (a graph dir made by mkgraph holds its model)"]
            )
        _, trans_model = load_model(graph_dir)
        cached = graph_dir / K2_GRAPH
        if not cached.is_file() or cached.stat().st_mtime < hclg_path.stat().st_mtime:
            log.info("%s: writing the k2 form of HCLG", cached)
            write_k2_graph(graph_dir, kaldifst.StdVectorFst.read(str(hclg_path)), trans_model)
        try:
            saved = torch.load(cached, weights_only=False)
            fsa = k2.Fsa.from_dict(saved["graph"])
        except Exception as e:  # a truncated or foreign file
            raise DataError([f"{cached}: cannot be read as a k2 graph ({e}); delete it to rebuild it"]) from None
        if saved["num_pdfs"] != trans_model.num_pdfs:
            raise DataError(
                [
                    f"{cached}: made for a model of {saved['num_pdfs']} pdfs, {graph_dir}/trans.pkl has "
                    f"{trans_model.num_pdfs}; delete it to rebuild it"
                ]
            )
        words = {i: w for w, i in read_symbol_table(graph_dir / "words.txt").items()}
        tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
        return cls(graph_dir, fsa, int(trans_model.num_pdfs), tid_to_pdf, trans_model, words)

    @classmethod
    def _load_hlg(cls, graph_dir: Path) -> "DecodingGraph":
        import k2  # optional: built from source by make setup; the torch FSA engine runs without it

        path = graph_dir / HLG_FILE
        try:
            saved = torch.load(path, weights_only=False)
            fsa = k2.Fsa.from_dict(saved["graph"])
        except Exception as e:  # a truncated or foreign file
            raise DataError(
                [f"{path}: cannot be read as a k2 graph ({e}); asrhybrid mkgraph-ctc --force rebuilds it"]
            ) from None
        words = {i: w for w, i in read_symbol_table(graph_dir / "words.txt").items()}
        return cls(graph_dir, fsa, int(saved["num_tokens"]), None, None, words)

    @property
    def is_hlg(self) -> bool:
        return self.trans_model is None
