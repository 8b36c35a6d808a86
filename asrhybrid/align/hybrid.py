"""Realignment with a trained hybrid acoustic model (Kaldi's steps/nnet3/align.sh, then training again).

The senone targets of stage 6 come from the flat start's context-independent
network, converted to the tree. Kaldi's practice is to realign the training
data with the better model and train on the new alignments: the state
boundaries move to where the trained network puts them, which matters most
for silence, whose middle states Kaldi's topology connects every way (any
ordering of them is a valid path, so the flat start's choice among them is
close to arbitrary).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asrhybrid.data.manifests import frame_blocks, load_cuts, transcript
from asrhybrid.kaldi_io import alignment_table_writer

log = logging.getLogger(__name__)


def align_with_am(cuts_path: Path | str, lang_dir: Path | str, tree_dir: Path | str, am_dir: Path | str,
                  out_dir: Path | str, backend: str = "auto", block_frames: int = 20_000,
                  device: str = "cpu") -> dict:
    """Forced alignment of every cut with the hybrid AM of ``am_dir`` (train-am's final.pt) through the tree's
    training graphs: ``out_dir``/ali.{ark,scp} (transition ids) and ali_pdf.{ark,scp}, the layout of the tree
    stage's, so train-am reads either. Streams blocks of about ``block_frames`` frames."""
    import torch

    from asrhybrid.align.graphs import GraphCompiler, align
    from asrhybrid.model import load_model
    from asrhybrid.nnet.train import iter_loglikes, load_am

    cuts_path, lang_dir, tree_dir, out_dir = map(Path, (cuts_path, lang_dir, tree_dir, out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    tree, trans_model = load_model(tree_dir)
    model, final = load_am(am_dir, device)
    if final["num_pdfs"] != trans_model.num_pdfs:
        raise ValueError(f"{am_dir} has {final['num_pdfs']} outputs but the tree in {tree_dir} has "
                         f"{trans_model.num_pdfs} pdfs: not a model of this tree")
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    compiler = GraphCompiler(lang_dir, tree, trans_model)
    failed, aligned = [], 0
    with alignment_table_writer(out_dir / "ali.ark") as write_ali, \
            alignment_table_writer(out_dir / "ali_pdf.ark") as write_pdf, torch.no_grad():
        for block in tqdm(frame_blocks(load_cuts(cuts_path), block_frames), desc="realign", unit="block", leave=False):
            scored = list(iter_loglikes(model, final, block, device=device))
            graphs = [compiler.compile(transcript(cut, cuts_path)) for cut, _ in scored]
            results = align(graphs, [m for _, m in scored], tid_to_pdf, backend=backend, beam=20.0, retry_beam=200.0)
            for (cut, _), result in zip(scored, results):
                if result is None:
                    failed.append(cut.id)
                    continue
                write_ali(cut.id, result[0])
                write_pdf(cut.id, tid_to_pdf[np.asarray(result[0])].tolist())
                aligned += 1
    if failed:
        log.warning("%d utterance(s) could not be aligned with %s: %s", len(failed), am_dir, " ".join(failed[:10]))
    log.info("realigned %d utterances with %s into %s", aligned, am_dir, out_dir)
    return {"aligned": aligned, "failed": failed}
