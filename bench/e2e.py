"""End-to-end branch benchmarks, in one run:

    python bench/e2e.py [--workdir work/yesno] [--part test] [--device cpu|cuda]

- ``training``: frames/s of a forward and backward pass of each system (Deep Speech CTC; ContextNet RNN-T
  with the pruned and the full loss, and pruned with a CTC head (scale 0.2); LAS with dot and with
  location-aware attention, and joint CTC/attention LAS (ctc_weight 0.3, location-aware)) on random batches of 8
  utterances of 6 s (23-bin fbank), and ``ctc_head_cost``: the speed without the CTC head over the speed with it;
- ``rnnt_loss``: k2's full rnnt_loss against the pruned one (rnnt_loss_smoothed, get_rnnt_prune_ranges,
  do_rnnt_pruning, rnnt_loss_pruned; prune range 5) on the same encoder and label-encoder outputs (B 8, T 150
  after 8x subsampling, U 40 labels, 500 tokens, joint dim 512): seconds for loss and backward, and peak
  memory (each measured in its own process: peak RSS growth over the run on CPU, Linux's reset high-water
  mark; torch's peak allocation on CUDA), with
  the ratios full / pruned (k2's published figures against torchaudio's loss: about 6x faster, 5x smaller);
- ``decoding`` (with ``--workdir``, a recipe workdir through stage 9): each trained system's real-time
  factor per search on the part, as ``asrhybrid decode-e2e`` runs it (every exp/<system>/final.pt, named
  systems too); for a LAS with a CTC head, its joint CTC/attention beam search against its attention-only one
  (``<system>_joint_over_attention_only``, the ratio of their real-time factors); and for CTC over HLG
  (``graph_small``), as ``asrhybrid decode`` runs it (its factor counts the search and the lattices, not the
  network).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from asrhybrid.features.layout import FeatureSet
from asrhybrid.nnet.checkpoint import TrainedSystem

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"B": 8, "T": 150, "U": 40, "V": 500, "D": 512}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux: 5 > /proc/self/clear_refs) and return the current RSS, KiB: the
    peak afterwards minus this is what the measured work added (the imports' own peak does not hide it)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def loss_run(kind: str, device: str) -> dict:
    """One measured RNN-T loss and backward (run in a fresh process: its peak memory is its own)."""
    import k2

    torch.manual_seed(0)
    B, T, U, V, D = (SHAPES[k] for k in "BTUVD")
    dev = torch.device(device)
    am = torch.randn(B, T, D, device=dev, requires_grad=True)
    lm = torch.randn(B, U + 1, D, device=dev, requires_grad=True)
    joint = torch.nn.Linear(D, V).to(dev)
    simple_am, simple_lm = torch.nn.Linear(D, V).to(dev), torch.nn.Linear(D, V).to(dev)
    symbols = torch.randint(1, V, (B, U), device=dev)
    boundary = torch.tensor([[0, 0, U, T]] * B, device=dev)
    base = _reset_peak_rss()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    if kind == "full":
        logits = joint(torch.tanh(am[:, :, None] + lm[:, None]))
        loss = k2.rnnt_loss(logits, symbols, 0, boundary, reduction="sum")
    else:
        simple, (px_grad, py_grad) = k2.rnnt_loss_smoothed(
            lm=simple_lm(lm),
            am=simple_am(am),
            symbols=symbols,
            termination_symbol=0,
            lm_only_scale=0.1,
            am_only_scale=0.1,
            boundary=boundary,
            reduction="sum",
            return_grad=True,
        )
        ranges = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 5)
        am_p, lm_p = k2.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
        loss = 0.5 * simple + k2.rnnt_loss_pruned(
            joint(torch.tanh(am_p + lm_p)), symbols, ranges, 0, boundary, reduction="sum"
        )
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak = (_status_kib("VmHWM") - base) / 1024
    return {"seconds": round(seconds, 4), "peak_mib": round(peak, 1), "loss": round(float(loss.detach()), 2)}


def rnnt_losses(device: str) -> dict:
    out = {"shapes": SHAPES, "device": device}
    for kind in ("full", "pruned"):
        runs = []
        for _ in range(3):
            proc = subprocess.run(
                [sys.executable, __file__, "--loss-run", kind, "--device", device],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out[kind] = {"seconds": min(r["seconds"] for r in runs), "peak_mib": min(r["peak_mib"] for r in runs)}
    out["full_over_pruned"] = {
        "time": round(out["full"]["seconds"] / out["pruned"]["seconds"], 2),
        "memory": round(out["full"]["peak_mib"] / max(out["pruned"]["peak_mib"], 1e-3), 2),
    }
    return out


def training_speed(device: str) -> dict:
    from asrhybrid.e2e.ctc import CtcObjective, DeepSpeech
    from asrhybrid.e2e.data import E2EBatch
    from asrhybrid.e2e.las import LAS, LasObjective
    from asrhybrid.e2e.rnnt import RnntObjective, RnnTransducer

    torch.manual_seed(0)
    B, T, V = 8, 600, 30
    batch = E2EBatch(
        [f"u{i}" for i in range(B)],
        torch.randn(B, T, 23),
        torch.full((B,), T),
        [torch.randint(3, V, (40,)).tolist() for _ in range(B)],
        [""] * B,
    )
    rnnt_ctc = RnnTransducer(23, V, channels=256, loss="pruned", ctc_scale=0.2)
    las_ctc = LAS(23, V, ctc_weight=0.3, attention="location", label_smoothing=0.1)
    systems = {
        "ctc": (DeepSpeech(23, V, hidden=512), CtcObjective("ctc", None)),
        "rnnt_pruned": (RnnTransducer(23, V, channels=256, loss="pruned"), RnntObjective("rnnt", None)),
        "rnnt_pruned_ctc_head": (rnnt_ctc, RnntObjective("rnnt", None, rnnt_ctc.loss_parts)),
        "rnnt_full": (RnnTransducer(23, V, channels=256, loss="full"), RnntObjective("rnnt", None)),
        "las": (LAS(23, V, ctc_weight=0.0), LasObjective("las", None)),  # the paper's
        "las_location": (LAS(23, V, ctc_weight=0.0, attention="location"), LasObjective("las", None)),
        "las_joint": (las_ctc, LasObjective("las", None, las_ctc.loss_parts)),
    }
    out = {}
    dev = torch.device(device)
    for name, (model, objective) in systems.items():
        model.to(dev).train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            loss, _ = objective.forward(model, batch, dev)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        out[name] = {
            "frames_per_second": round(B * T / min(times[1:]), 1),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
    # what a CTC head costs in training: the speed without it over the speed with it
    out["ctc_head_cost"] = {
        "rnnt": round(out["rnnt_pruned"]["frames_per_second"] / out["rnnt_pruned_ctc_head"]["frames_per_second"], 3),
        "las": round(out["las_location"]["frames_per_second"] / out["las_joint"]["frames_per_second"], 3),
    }
    return out


def decoding(workdir: Path, part: str) -> dict:
    out = {}
    corpus = FeatureSet.in_dir(workdir / "data" / "fbank", part).cuts
    lm = workdir / "data" / "lm" / "large.arpa"
    for exp in sorted(p.parent for p in (workdir / "exp").glob("*/final.pt")):
        trained = TrainedSystem.load(exp)
        system, kind = exp.name, trained.system
        if kind not in ("ctc", "rnnt", "las"):
            continue
        # (its name in the report, method, with the LM, more options)
        searches = [("greedy", "greedy", False, []), ("beam", "beam", False, []), ("beam", "beam", True, [])]
        searches += [("flashlight", "flashlight", True, [])] if kind == "ctc" else []
        joint = kind == "las" and any(k.startswith("ctc.") for k in trained.weights)  # a LAS with a CTC head
        # joint CTC/attention decoding (the training's ctc_weight) against the same model's attention-only search
        searches += [("beam_attention_only", "beam", False, ["--opt", "ctc_weight=0.0"])] if joint else []
        for name, method, with_lm, extra in searches:
            with tempfile.TemporaryDirectory() as tmp:
                args = [
                    sys.executable,
                    "-m",
                    "asrhybrid",
                    "decode-e2e",
                    str(exp),
                    str(corpus),
                    tmp,
                    "--opt",
                    f"method={method}",
                    *extra,
                ] + (["--lm", str(lm)] if with_lm else [])
                subprocess.run(args, check=True, capture_output=True, cwd=REPO)
                summary = json.loads((Path(tmp) / "decode.json").read_text())
            out[f"{system}_{name}{'_lm' if with_lm else ''}"] = {
                "real_time_factor": summary["real_time_factor"],
                "utterances": summary["utterances"],
            }
        if joint:
            rtf = {name: out[f"{system}_{name}"]["real_time_factor"] for name in ("beam", "beam_attention_only")}
            out[f"{system}_joint_over_attention_only"] = round(rtf["beam"] / rtf["beam_attention_only"], 2)
        graph = exp / "graph_small"
        if kind == "ctc" and (graph / "HLG.k2.pt").is_file():  # WFST decoding over HLG (stage 8's decoder)
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(
                    [sys.executable, "-m", "asrhybrid", "decode", str(graph), str(exp), tmp, "--cuts", str(corpus)],
                    check=True,
                    capture_output=True,
                    cwd=REPO,
                )
                summary = json.loads((Path(tmp) / "decode.json").read_text())
            out[f"{system}_hlg_lm"] = {
                "real_time_factor": summary["real_time_factor"],
                "utterances": summary["utterances"],
                "lattice_arcs_per_frame": summary["lattice_arcs_per_frame"],
                "note": "k2's search and the word lattices; the network's forward pass not counted",
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--part", default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.loss_run:
        print(json.dumps(loss_run(args.loss_run, args.device)))
        return
    report = {
        "device": args.device,
        "threads": args.threads,
        "training": training_speed(args.device),
        "rnnt_loss": rnnt_losses(args.device),
    }
    if args.workdir:
        report["decoding"] = decoding(args.workdir, args.part)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
