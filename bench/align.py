"""Forced-alignment speed: the FSA engines' batched Viterbi (k2 and asrhybrid's torch engine) against Kaldi's C++ aligner, in one run.

Prints JSON. Two workloads:

- ``random`` (default, needs nothing): real training graphs (Kaldi's
  compile-train-graphs through asrhybrid.align.graphs, transition
  probabilities added as Kaldi's align scripts do) for random 8-word yes/no
  transcripts over Kaldi's yesno lang, with random frame scores per pdf. Flat
  scores are the worst case for Kaldi's beam: it prunes little.
- ``--workdir work/synth``: a recipe's own training graphs and the scaled
  likelihoods of its flat-start network (stage 4 must have run), with
  Kaldi's flat-start beams (20, retry 200). Peaked scores let Kaldi's beam
  prune hard, and it can then miss the best path; the share of utterances
  where the exact FSA Viterbi found a better path is reported.

Kaldi aligns each utterance in turn on one core (align_utterance_wrapper);
the engines align batches at once, on CPU (torch threads as given) and on
CUDA when present (k2 there only if it was built with CUDA). Two figures per
engine: ``viterbi`` (the batched intersection and best path, graphs already
converted, as k2's benchmarks count; a flat start converts its graphs once
and realigns them every iteration) and ``end_to_end`` (also converting the
Kaldi FSTs, for k2 removing their epsilons, and padding the scores, per
call). Reported: frames per second, ratios to Kaldi on one core, and the
share of alignments identical to Kaldi's.

Targets: CUDA batched >= 50x Kaldi on one core; on CPU the fastest exact
engine is the default aligner (asrhybrid.align.graphs.default_backend).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def random_workload(utterances: int):
    from asrhybrid.align.graphs import GraphCompiler
    from asrhybrid.hmm import init_mono_model
    from asrhybrid.lang.dicts import prepare_dict
    from asrhybrid.lang.prepare_lang import prepare_lang

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare_dict("yesno", tmp / "dict", [])
        lang = prepare_lang(tmp / "dict", tmp / "lang", "<SIL>", position_dependent_phones=False)
        tree, tm = init_mono_model(lang, tmp / "mono")
        compiler = GraphCompiler(lang, tree, tm)
    rng = np.random.default_rng(0)
    graphs = [compiler.compile(" ".join(rng.choice(["YES", "NO"], 8))) for _ in range(utterances)]
    scores = [(3 * rng.standard_normal((int(rng.integers(300, 700)), tm.num_pdfs))).astype(np.float32) for _ in graphs]
    return tm, graphs, scores, (200.0, 0.0)


def recipe_workload(workdir: Path, utterances: int):
    from lhotse import load_manifest

    from asrhybrid.align.flat_start import load_flat_start_model
    from asrhybrid.align.graphs import GraphCompiler
    from asrhybrid.features.layout import FeatureSet
    from asrhybrid.hmm import load_model

    model, mean, std, log_prior = load_flat_start_model(workdir / "exp" / "mono_flat")
    tree, tm = load_model(workdir / "exp" / "mono_flat")
    compiler = GraphCompiler(workdir / "data" / "lang", tree, tm)
    cuts_path = FeatureSet.in_dir(workdir / "data" / "fbank", "train").cuts
    graphs, scores = [], []
    with torch.no_grad():
        for cut in list(load_manifest(cuts_path))[:utterances]:
            graphs.append(compiler.compile(cut.supervisions[0].text))
            feats = torch.from_numpy(((cut.load_features() - mean) / std).astype(np.float32))
            scores.append(model.log_posteriors(feats).numpy() - log_prior)
    return tm, graphs, scores, (20.0, 200.0)


def time_viterbi(graphs, scores, tid_to_pdf, device: str, batch: int, engine: str) -> float:
    """Seconds of the batched Viterbi alone over length-sorted batches prepared (and graphs converted) beforehand."""
    from asrhybrid.align.graphs import TrainingGraph
    from asrhybrid.fsa import DenseFsaVec, shortest_path
    from asrhybrid.fsa.k2_engine import to_k2

    order = sorted(range(len(graphs)), key=lambda i: -scores[i].shape[0])
    batches = []
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        lengths = [scores[i].shape[0] for i in chunk]
        log_probs = torch.empty((len(chunk), max(lengths), scores[0].shape[1]))  # frames past a length are never read
        for row, i in enumerate(chunk):
            log_probs[row, : lengths[row]] = torch.from_numpy(scores[i])
        dense = DenseFsaVec(log_probs.to(device), torch.tensor(lengths), torch.as_tensor(tid_to_pdf))
        fsas = [TrainingGraph(graphs[i]).fsa for i in chunk]
        if engine == "k2":
            for f in fsas:
                to_k2(f, dense.label_to_column, device)
        batches.append((fsas, dense))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for fsas, dense in batches:
        shortest_path(fsas, dense, engine)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def engines_on(device: str) -> list[str]:
    from asrhybrid.fsa.k2_engine import available, with_cuda

    return ["torch"] + (["k2"] if available() and (device == "cpu" or with_cuda()) else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--workdir", type=Path, help="use this recipe's graphs and flat-start scores (e.g. work/synth)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for ours")
    parser.add_argument("--cuda-batch", type=int, default=1024, help="utterances per CUDA batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from asrhybrid.align.graphs import align_fsa, align_kaldi

    if args.workdir:
        tm, graphs, scores, (beam, retry) = recipe_workload(args.workdir, args.utterances)
    else:
        tm, graphs, scores, (beam, retry) = random_workload(args.utterances)
    tid_to_pdf = np.asarray(tm.transition_id_to_pdf_array(), dtype=np.int64)
    frames = sum(s.shape[0] for s in scores)

    start = time.perf_counter()
    kaldi = align_kaldi(graphs, scores, tid_to_pdf, beam=beam, retry_beam=retry)
    kaldi_s = time.perf_counter() - start

    result = {
        "workload": str(args.workdir or "random"),
        "utterances": len(graphs),
        "frames": frames,
        "mean_graph_states": round(float(np.mean([g.num_states for g in graphs])), 1),
        "kaldi_beam": [beam, retry],
        "kaldi_frames_per_s": round(frames / kaldi_s),
        "kaldi_failed": sum(k is None for k in kaldi),
    }
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        batch = 256 if device == "cpu" else args.cuda_batch
        result[device] = {"batch": batch}
        for engine in engines_on(device):
            align_fsa(graphs[:8], scores[:8], tid_to_pdf, device, engine=engine)  # warm-up (CUDA context, allocator)
            start = time.perf_counter()
            ours = align_fsa(graphs, scores, tid_to_pdf, device, batch=batch, engine=engine)
            if device == "cuda":
                torch.cuda.synchronize()
            ours_s = time.perf_counter() - start
            viterbi_s = time_viterbi(graphs, scores, tid_to_pdf, device, batch, engine)
            both = [(o, k) for o, k in zip(ours, kaldi) if o is not None and k is not None]
            result[device][engine] = {
                "viterbi_frames_per_s": round(frames / viterbi_s),
                "ratio_viterbi_vs_kaldi_one_core": round(kaldi_s / viterbi_s, 3),
                "end_to_end_frames_per_s": round(frames / ours_s),
                "ratio_end_to_end_vs_kaldi_one_core": round(kaldi_s / ours_s, 3),
                "identical_alignments": round(sum(o[0] == k[0] for o, k in both) / len(kaldi), 4),
                "failed": sum(o is None for o in ours),
                # where Kaldi's beam lost the best path: the exact engine scores higher
                "better_than_kaldi": round(sum(o[1] > k[1] + 1e-4 * abs(k[1]) for o, k in both) / len(kaldi), 4),
            }
        if {"k2", "torch"} <= set(result[device]):
            result[device]["ratio_k2_vs_torch_viterbi"] = round(
                result[device]["k2"]["viterbi_frames_per_s"] / result[device]["torch"]["viterbi_frames_per_s"], 3
            )
    result["torch_threads"] = args.threads
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
