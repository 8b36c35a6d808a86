"""Decoding speed: the k2 lattice decoder against Kaldi's LatticeFasterDecoder (1-best) on the same HCLG, scores and
beams, one thread each, in one run; lattice density; rescoring time per utterance by both methods.

    python bench/decode.py --workdir work/synth [--system lstmp] [--part test] [--threads 1]

Needs a recipe workdir through stage 7 (the system's final.pt, exp/tree/graph_small, the part's cuts, the LMs
of data/lm). The network's scores are computed once, untimed. Prints JSON:

- ``kaldi``: Kaldi's decoder, one utterance at a time, frames/s and real-time factor;
- ``k2_search``: k2.intersect_dense_pruned and the best path, the part's utterances in batches (what competes
  with Kaldi's search); ``k2_with_lattices``: also the word lattices (pruned determinization, compiled);
- ratios to Kaldi (the goal: k2's search on CPU within 2x of Kaldi, i.e. a ratio of at least 0.5);
- 1-best agreement with Kaldi; lattice density (arcs per frame of the search's state-level lattices and of the
  word lattices);
- rescoring seconds per utterance: whole-lattice (k2) and n-best (KenLM, n=100);
- ``cuda`` (when a GPU is present and k2 was built with CUDA): k2's batched search there, its ratio to Kaldi's
  one core (the goal: at least 100x).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def scores_of(workdir: Path, system: str, part: str, limit: int):
    from lhotse import load_manifest

    from asrhybrid.features.layout import FeatureSet
    from asrhybrid.nnet.inference import iter_loglikes, load_am

    corpus = FeatureSet.in_dir(workdir / "data" / "fbank", part).cuts
    cuts = load_manifest(corpus).subset(first=limit) if limit else load_manifest(corpus)
    model, final = load_am(workdir / "exp" / system)
    return [(c.id, ll, float(c.duration)) for c, ll in iter_loglikes(model, final, cuts, acwt=1.0)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("work/synth"))
    parser.add_argument("--system", default="lstmp")
    parser.add_argument("--part", default="test")
    parser.add_argument("--utterances", type=int, default=0, help="0: all of the part")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--acwt", type=float, default=0.1)
    parser.add_argument("--batch-frames", type=int, default=20000)
    parser.add_argument("--search-beam", type=float, default=20.0)
    parser.add_argument("--output-beam", type=float, default=8.0)
    parser.add_argument("--lattice-beam", type=float, default=6.0)
    parser.add_argument("--max-active", type=int, default=30000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from asrhybrid.decode.corpus import frame_batches
    from asrhybrid.decode.decoder import DecodeConfig, KaldiDecoder, decode_batch
    from asrhybrid.decode.rescore import K2LanguageModel, open_lm, rescore_lattice, rescore_nbest
    from asrhybrid.graph.k2graph import DecodingGraph
    from asrhybrid.lm.train import arpa_to_g

    graph = DecodingGraph.load(args.workdir / "exp" / "tree" / "graph_small")
    cfg = DecodeConfig(
        acwt=args.acwt,
        batch_frames=args.batch_frames,
        search_beam=args.search_beam,
        output_beam=args.output_beam,
        lattice_beam=args.lattice_beam,
        max_active=args.max_active,
    )
    items = scores_of(args.workdir, args.system, args.part, args.utterances)
    frames = sum(ll.shape[0] for _, ll, _ in items)
    audio = sum(d for _, _, d in items)
    batches = [[(u, ll) for u, ll, _ in b] for b in frame_batches(items, cfg.batch_frames)]

    kaldi = KaldiDecoder(graph, cfg)
    kaldi_hyps, kaldi_s = timed(lambda: [kaldi.decode(u, ll) for u, ll, _ in items])
    search, search_s = timed(lambda: [h for b in batches for h in decode_batch(graph, b, cfg, lattices=False)])
    full, full_s = timed(lambda: [h for b in batches for h in decode_batch(graph, b, cfg, lattices=True)])

    def speed(seconds):
        return {
            "seconds": round(seconds, 3),
            "frames_per_second": round(frames / seconds, 1),
            "real_time_factor": round(seconds / audio, 5),
        }

    same = sum(k.words == h.words for k, h in zip(kaldi_hyps, search))
    not_worse = sum(h.cost <= k.cost + 1e-3 * max(1.0, abs(k.cost)) for k, h in zip(kaldi_hyps, search))
    report = {
        "workdir": str(args.workdir),
        "system": args.system,
        "part": args.part,
        "utterances": len(items),
        "frames": frames,
        "audio_seconds": round(audio, 2),
        "threads": args.threads,
        "beams": {
            "search_beam": cfg.search_beam,
            "output_beam": cfg.output_beam,
            "lattice_beam": cfg.lattice_beam,
            "max_active": cfg.max_active,
            "acwt": cfg.acwt,
        },
        "kaldi": speed(kaldi_s),
        "k2_search": speed(search_s),
        "k2_with_lattices": speed(full_s),
        "ratio_k2_search_to_kaldi": round(kaldi_s / search_s, 3),
        "ratio_k2_with_lattices_to_kaldi": round(kaldi_s / full_s, 3),
        "same_1best_words_as_kaldi": f"{same}/{len(items)}",
        "k2_path_at_least_as_good": f"{not_worse}/{len(items)}",
        "state_lattice_arcs_per_frame": round(sum(h.lattice_arcs for h in full) / frames, 2),
        "word_lattice_arcs_per_frame": round(sum(len(h.lattice.arcs) for h in full if h.ok) / frames, 4),
    }
    lm_dir = args.workdir / "data" / "lm"
    if (lm_dir / "small.arpa").is_file() and (lm_dir / "large.arpa").is_file():
        old = open_lm(lm_dir / "small.arpa", graph.words)
        new = open_lm(lm_dir / "large.arpa", graph.words)
        g_fst = Path(args.workdir / "data" / "lm" / "bench_large_G.fst")
        if not g_fst.is_file():
            arpa_to_g(lm_dir / "large.arpa", graph.graph_dir / "words.txt", g_fst)
        new_k2 = K2LanguageModel.from_g_fst(g_fst, graph.words)
        lats = [h.lattice for h in full if h.ok]
        _, lat_s = timed(lambda: [rescore_lattice(lat, old, new_k2) for lat in lats])
        _, nbest_s = timed(lambda: [rescore_nbest(lat, old, new, 100) for lat in lats])
        report["rescoring_seconds_per_utterance"] = {
            "lattice_k2": round(lat_s / len(lats), 5),
            "nbest_kenlm_100": round(nbest_s / len(lats), 5),
        }
    from asrhybrid.fsa.k2_engine import with_cuda

    if torch.cuda.is_available() and with_cuda():
        decode_batch(graph, batches[0], cfg, device="cuda", lattices=False)  # warm-up
        torch.cuda.synchronize()
        _, cuda_s = timed(
            lambda: [h for b in batches for h in decode_batch(graph, b, cfg, device="cuda", lattices=False)]
        )
        report["cuda"] = {**speed(cuda_s), "ratio_to_kaldi_one_core": round(kaldi_s / cuda_s, 2)}
    else:
        report["cuda"] = "not run: no GPU here, or k2 built without CUDA"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
