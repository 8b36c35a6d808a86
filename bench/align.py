"""Forced-alignment speed: asrhybrid.fsa's batched Viterbi against Kaldi's C++ aligner, in one run.

Prints JSON. The graphs are real training graphs (asrhybrid.align.graphs:
Kaldi's compile-train-graphs, transition probabilities added as Kaldi's align
scripts do) for random 8-word yes/no transcripts over Kaldi's yesno lang; the
frame scores per pdf are random. The alignment of the FSA engine includes
building its batch tensors from the Kaldi graphs. Kaldi aligns each utterance in turn on one core
(align_utterance_wrapper, beam 200); ours aligns the whole batch at once, on
CPU (torch threads as given) and on CUDA when present. Reported: frames per
second of each, the ratio, and the share of identical alignments.

Issue 4's targets: CUDA batched >= 50x Kaldi on one core; on CPU, report the
ratio (below 1, Kaldi's aligner is the CPU default).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for ours")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from asrhybrid.align.graphs import GraphCompiler, align_fsa, align_kaldi
    from asrhybrid.graph.mkgraph import init_mono_model
    from asrhybrid.lang.dicts import prepare_dict
    from asrhybrid.lang.prepare_lang import prepare_lang

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_dict("yesno", tmp / "dict", [])
        lang = prepare_lang(tmp / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
        tree, tm = init_mono_model(lang, tmp / "mono")
        compiler = GraphCompiler(lang, tree, tm)
    tid_to_pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    rng = np.random.default_rng(0)
    graphs = [compiler.compile(" ".join(rng.choice(["YES", "NO"], 8))) for _ in range(args.utterances)]
    scores = [(3 * rng.standard_normal((int(rng.integers(300, 700)), tm.num_pdfs))).astype(np.float32) for _ in graphs]
    frames = sum(s.shape[0] for s in scores)

    start = time.perf_counter()
    kaldi = align_kaldi(graphs, scores, tid_to_pdf, beam=200.0, retry_beam=0.0)
    kaldi_s = time.perf_counter() - start

    result = {"utterances": len(graphs), "frames": frames, "kaldi_frames_per_s": round(frames / kaldi_s)}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        align_fsa(graphs[:8], scores[:8], tid_to_pdf, device)  # warm-up (CUDA context, allocator)
        start = time.perf_counter()
        ours = align_fsa(graphs, scores, tid_to_pdf, device)
        if device == "cuda":
            torch.cuda.synchronize()
        ours_s = time.perf_counter() - start
        result[f"ours_{device}_frames_per_s"] = round(frames / ours_s)
        result[f"ratio_ours_{device}_vs_kaldi_one_core"] = round(kaldi_s / ours_s, 3)
        result[f"identical_alignments_{device}"] = sum(a[0] == b[0] for a, b in zip(ours, kaldi)) / len(kaldi)
    result["torch_threads"] = args.threads
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
