"""Model directories: the HMM side of a model (``topo``, the tree, the transition model), the one place
that writes and reads them. kaldi-hmm-gmm has no reader for Kaldi's ``final.mdl``, so the tree and the
transition model are pickled (their pickle hooks run Kaldi's own binary Read/Write)."""

from __future__ import annotations

import pickle
from pathlib import Path

from asrhybrid.errors import DataError
from asrhybrid.kaldi_wrappers import khg
from asrhybrid.lang.io import read_topo
from asrhybrid.outputs import atomic_output, write_text_atomic


def init_mono_model(lang_dir: Path | str, model_dir: Path | str):
    """A monophone tree and transition model for ``lang_dir``'s topology; returns (tree, trans_model)."""
    lang_dir, model_dir = Path(lang_dir), Path(model_dir)
    topo_text = read_topo(lang_dir)
    topo = khg.HmmTopology()
    topo.read(topo_text)
    tree = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes()
    )
    trans_model = khg.TransitionModel(ctx_dep=tree, hmm_topo=topo)
    save_model(model_dir, topo_text, tree, trans_model)
    return tree, trans_model


MODEL_FILES = ("topo", "tree", "trans.pkl")  # what save_model writes


def save_model(model_dir: Path, topo_text: str, tree, trans_model) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(model_dir / "topo", topo_text)
    with atomic_output(model_dir / "tree") as tmp:
        tmp.write_bytes(pickle.dumps(tree))
    with atomic_output(model_dir / "trans.pkl") as tmp:
        tmp.write_bytes(pickle.dumps(trans_model))


def load_model(model_dir: Path | str):
    """(tree, trans_model) of a model dir."""
    model_dir = Path(model_dir)
    for name in ("tree", "trans.pkl"):
        if not (model_dir / name).is_file():
            raise DataError([f"{model_dir / name} not found (asrhybrid init-mono LANG MODEL makes a monophone model)"])
    return pickle.loads((model_dir / "tree").read_bytes()), pickle.loads((model_dir / "trans.pkl").read_bytes())
