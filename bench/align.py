"""Forced-alignment speed: asrhybrid.fsa's batched Viterbi against Kaldi's C++ aligner, in one run.

Prints JSON. The graphs are real training graphs (Kaldi's compile-train-graphs
through kaldi-hmm-gmm, transition probabilities added as gmm-align-compiled
does) for random 8-word yes/no transcripts over Kaldi's yesno lang; the frame
scores are random. Kaldi aligns each utterance in turn on one core
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

    from asrhybrid.fsa import DenseFsaVec, FsaVec, from_kaldi, shortest_path
    from asrhybrid.graph.mkgraph import init_mono_model
    from asrhybrid.kaldi import kaldifst, khg
    from asrhybrid.lang.dicts import prepare_dict
    from asrhybrid.lang.prepare_lang import prepare_lang
    from asrhybrid.lm.train import read_symbol_table

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_dict("yesno", tmp / "dict", [])
        lang = prepare_lang(tmp / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
        tree, tm = init_mono_model(lang, tmp / "mono")
        words = read_symbol_table(lang / "words.txt")
        disambig = [int(x) for x in (lang / "phones" / "disambig.int").read_text().split()]
        compiler = khg.TrainingGraphCompiler(
            trans_model=tm, ctx_dep=tree, lex_fst=kaldifst.StdVectorFst.read(str(lang / "L.fst")),
            disambig_syms=disambig, opts=khg.TrainingGraphCompilerOptions(transition_scale=0.0, self_loop_scale=0.0),
        )
    rng = np.random.default_rng(0)
    graphs, scores = [], []
    for _ in range(args.utterances):
        g = compiler.compile_graph_from_text([words[w] for w in rng.choice(["YES", "NO"], 8)])
        khg.add_transition_probs(trans_model=tm, disambig_syms=disambig, transition_scale=1.0, self_loop_scale=0.1, fst=g)
        graphs.append(g)
        scores.append((3 * rng.standard_normal((int(rng.integers(300, 700)), tm.num_transition_ids))).astype(np.float32))
    frames = sum(s.shape[0] for s in scores)

    start = time.perf_counter()
    kaldi = []
    for g, s in zip(graphs, scores):
        r = khg.align_utterance_wrapper(config=khg.AlignConfig(beam=200.0, retry_beam=0.0), utt="u", acoustic_scale=1.0,
                                        fst=g, decodable=khg.DecodableCtc(s), num_done=0, num_error=0, num_retried=0,
                                        tot_like=0.0, frame_count=0)
        kaldi.append(list(r[5]))
    kaldi_s = time.perf_counter() - start

    fsas = [from_kaldi(g) for g in graphs]
    label_to_column = torch.clamp(torch.arange(-1, tm.num_transition_ids), min=0)
    log_probs = torch.zeros(len(scores), max(s.shape[0] for s in scores), tm.num_transition_ids)
    for i, s in enumerate(scores):
        log_probs[i, : s.shape[0]] = torch.from_numpy(s)
    lengths = torch.tensor([s.shape[0] for s in scores])

    result = {"utterances": len(graphs), "frames": frames, "kaldi_frames_per_s": round(frames / kaldi_s)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        dense = DenseFsaVec(log_probs.to(device), lengths, label_to_column)
        vec = FsaVec.from_fsas(fsas, device)
        shortest_path(vec, dense)  # warm-up (CUDA context, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        best = shortest_path(vec, dense)
        if device == "cuda":
            torch.cuda.synchronize()
        ours_s = time.perf_counter() - start
        result[f"ours_{device}_frames_per_s"] = round(frames / ours_s)
        result[f"ratio_ours_{device}_vs_kaldi_one_core"] = round(kaldi_s / ours_s, 3)
        result[f"identical_alignments_{device}"] = sum(a == b for a, b in zip(best.labels, kaldi)) / len(kaldi)
    result["torch_threads"] = args.threads
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
