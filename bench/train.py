"""Stage 6 training speed: frames/s of the DNN, LSTMP and Fast/Slow training steps, and the LSTMP's full loop
against a bare ``torch.nn.LSTM(proj_size)`` forward and backward of the same size and batch, in one run.

Prints JSON. Per system and device (CPU; CUDA when present, with the
trainer's bf16 autocast):

- ``step``: asrhybrid's training step (asrhybrid.nnet.train: forward, senone
  cross-entropy, backward, gradient clipping, Adam) on a fixed batch of
  ``--batch`` chunks of ``--frames`` frames (Kaldi's 150-frame chunks plus 40
  frames of left context by default), frames/s counting every input frame;
- ``epoch`` (with ``--workdir``, a recipe workdir that ran stage 5): one epoch
  of ``train_am`` on the recipe's training cuts, features read from disk,
  chunked and batched by the Lhotse sampler: the whole loop a user runs;
- for the LSTMP, ``bare_lstm``: the same-sized ``nn.LSTM(proj_size)`` alone,
  forward and backward of a sum, on the same batch: the ceiling, and
  ``step / bare_lstm`` and ``epoch / bare_lstm`` ratios (the issue's target:
  >= 0.8 on GPU).

With ``--chain-tree`` (a chain system's tree dir, e.g. work/synth/exp/chain_tree, and ``--lang`` its lang dir),
LF-MMI's step on the same batch (issue 24), per network:

- ``chain_step``: forward, the LF-MMI objective (numerators: the alignment paths of the tree dir's first
  utterances, chunks of 50 output frames; the denominator graph of its alignments, leaky HMM 0.1), the xent
  regulariser, backward, clipping, Adam; input frames/s, beside the cross-entropy ``step`` and their ratio;
- ``denominator``: the denominator's forward-backward alone on random outputs of the same shape, output
  frames/s, with the graph's size.

Run: ``.venv/bin/python bench/train.py [--workdir work/synth] [--chain-tree DIR --lang DIR] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` (after two warm-up calls)."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def step_rate(
    system: str,
    model_opts: dict,
    feat_dim: int,
    num_pdfs: int,
    batch: int,
    frames: int,
    device: torch.device,
    repeats: int,
) -> dict:
    from asrhybrid.nnet.models import build_model
    from asrhybrid.nnet.train import TrainConfig, _losses
    from asrhybrid.nnet.trainer import autocast as _autocast

    torch.manual_seed(0)
    model = build_model(system, feat_dim, num_pdfs, model_opts).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, frames, feat_dim, device=device)
    y = torch.randint(num_pdfs, (batch, frames), device=device)
    cfg = TrainConfig(system=system)

    def step():
        optimizer.zero_grad()
        with _autocast(device, cfg.amp):
            loss, _, _ = _losses(model, x, y, cfg.fast_weight)
        (loss / y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    seconds = timed(step, repeats, device)
    with torch.no_grad():
        flops = forward_flops(model, x[:1])
    return {
        "frames_per_s": round(batch * frames / seconds),
        "parameters": sum(p.numel() for p in model.parameters()),
        "forward_mflops_per_frame": round(flops / frames / 1e6, 3),
    }


def forward_flops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return float(counter.get_total_flops())


def bare_lstm_rate(opts: dict, feat_dim: int, batch: int, frames: int, device: torch.device, repeats: int) -> float:
    lstm = torch.nn.LSTM(
        feat_dim, opts["cells"], num_layers=opts["layers"], proj_size=opts["proj"], batch_first=True
    ).to(device)
    x = torch.randn(batch, frames, feat_dim, device=device)

    def step():
        lstm.zero_grad()
        lstm(x)[0].sum().backward()

    return batch * frames / timed(step, repeats, device)


def epoch_rate(workdir: Path, system: str, model_opts: dict, chunk: int, device: torch.device) -> dict:
    """One epoch of train_am on a recipe's training cuts: frames/s of the whole loop (reading included)."""
    from asrhybrid.data.manifests import load_cuts
    from asrhybrid.features.cmvn import global_mean_std
    from asrhybrid.features.layout import FeatureSet
    from asrhybrid.hmm import load_model
    from asrhybrid.nnet.train import TrainConfig, train_am

    features = FeatureSet.in_dir(workdir / "data" / "fbank", "train")
    cuts, cmvn = features.cuts, features.global_cmvn
    _, trans_model = load_model(workdir / "exp" / "tree")
    mean, std = global_mean_std(cmvn)
    cfg = TrainConfig(
        system=system,
        epochs=1,
        max_duration=60.0,
        chunk_frames=chunk if system != "dnn" else 0,
        valid_fraction=0.0,
        model=model_opts,
    )
    frames = sum(c.num_frames for c in load_cuts(cuts))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_am(
            cuts,
            workdir / "exp" / "tree" / "ali_pdf.ark",
            trans_model.num_pdfs,
            set(),
            mean,
            std,
            Path(tmp),
            cfg,
            device=device,
        )
        seconds = time.perf_counter() - start
    return {"frames_per_s": round(frames / seconds), "frames": frames, "num_pdfs": trans_model.num_pdfs}


def chain_rates(
    tree_dir: Path, lang_dir: Path, systems: dict, feat_dim: int, batch: int, frames: int, device, repeats: int
) -> dict:
    """LF-MMI's training step per system and the denominator alone, on the chain tree's graph (see the doc)."""
    from types import SimpleNamespace

    from asrhybrid.align.graphs import GraphCompiler
    from asrhybrid.chain.objective import ChainConfig, ChainObjective
    from asrhybrid.chain.supervision import SupervisionMaker
    from asrhybrid.chain.training import denominator_from_alignments, tree_frame_subsampling
    from asrhybrid.fsa import DenseFsaVec
    from asrhybrid.fsa.denominator import DenominatorTopology, denominator_log_likelihood
    from asrhybrid.hmm import load_model
    from asrhybrid.kaldi_tables import AlignmentTable, iter_alignments
    from asrhybrid.nnet.batches import IGNORE
    from asrhybrid.nnet.models import build_model
    from asrhybrid.nnet.train import TrainConfig
    from asrhybrid.nnet.trainer import autocast as _autocast

    factor = tree_frame_subsampling(tree_dir)
    chain = ChainConfig(frame_subsampling_factor=factor)
    tree, trans = load_model(tree_dir)
    den, den_stats = denominator_from_alignments(tree_dir / "ali.ark", tree, trans, chain)
    alignments = AlignmentTable(tree_dir / "ali.ark")
    maker = SupervisionMaker(GraphCompiler(lang_dir, tree, trans), alignments, chain.output_tolerance, den)
    left = 40  # the chunk's left context, as --frames' default (150 + 40)
    outputs = len(range(left, frames, factor))
    utts = []
    for utt, tids in iter_alignments(tree_dir / "ali.ark"):
        if len(tids) >= outputs:
            utts.append(utt)
        if len(utts) == batch:
            break
    supervision = [maker.chunk(SimpleNamespace(id=u), 0, outputs) for u in utts]
    y = torch.full((len(utts), frames), IGNORE, dtype=torch.int64)
    y[:, left::factor] = 0  # where the chunk's targets are: the objective reads the positions only
    x = torch.randn(len(utts), frames, feat_dim, device=device)
    rows = {
        "den_graph": {
            **den_stats["den"],
            "phone_lm_states": den_stats["phone_lm"]["states"],
            "build_s": den_stats["seconds"],
        },
        "frame_subsampling_factor": factor,
        "output_frames": outputs,
    }
    for system, opts in systems.items():
        torch.manual_seed(0)
        model = build_model(f"{system}_chain", feat_dim, trans.num_pdfs, opts).to(device)
        cfg = TrainConfig(system=f"{system}_chain", chunk_frames=frames - left)
        objective = ChainObjective(cfg, None, None, getattr(model, "right_context", 0), None, chain, den, maker)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad()
            with _autocast(device, cfg.amp):
                loss, stats = objective.forward(model, (x, y, (supervision, True)), device)
            (loss / stats["count"]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()

        rows[system] = {"chain_step_frames_per_s": round(len(utts) * frames / timed(step, repeats, device))}
    topology = DenominatorTopology.from_graph(den.fsa, den.initial, torch.float32, device)
    scores = torch.randn(len(utts), outputs, trans.num_pdfs, device=device, requires_grad=True)
    dense = DenseFsaVec(scores, torch.full((len(utts),), outputs), den.label_to_column)

    def den_alone():
        scores.grad = None
        denominator_log_likelihood(topology, dense, chain.leaky_hmm_coefficient).sum().backward()

    rows["denominator"] = {"output_frames_per_s": round(len(utts) * outputs / timed(den_alone, repeats, device))}
    alignments.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="a recipe workdir after stage 5: also time whole epochs")
    parser.add_argument("--feat-dim", type=int, default=80)
    parser.add_argument("--num-pdfs", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=190, help="frames per chunk (150 + 40 left context)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--large", action="store_true", help="the paper's LSTMP: 2 layers of 800 cells, 512 projection")
    parser.add_argument("--chain-tree", type=Path, help="a chain system's tree dir: also time LF-MMI's step")
    parser.add_argument("--lang", type=Path, help="the lang dir of --chain-tree")
    args = parser.parse_args()
    if args.chain_tree:  # the cross-entropy step over as many pdfs as the chain model's, for a like comparison
        from asrhybrid.hmm import load_model

        args.num_pdfs = load_model(args.chain_tree)[1].num_pdfs
    if args.threads:
        torch.set_num_threads(args.threads)
    lstmp = {"cells": 800, "proj": 512, "layers": 2} if args.large else {"cells": 320, "proj": 128, "layers": 2}
    systems = {"dnn": {}, "lstmp": lstmp, "fast_slow": {}}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report = {
        "batch": args.batch,
        "frames": args.frames,
        "feat_dim": args.feat_dim,
        "num_pdfs": args.num_pdfs,
        "threads": torch.get_num_threads(),
        "lstmp": lstmp,
        "devices": {},
    }
    for device in devices:
        rows = {}
        for system, opts in systems.items():
            rows[system] = step_rate(
                system, opts, args.feat_dim, args.num_pdfs, args.batch, args.frames, device, args.repeats
            )
        bare = bare_lstm_rate(lstmp, args.feat_dim, args.batch, args.frames, device, args.repeats)
        rows["bare_lstm"] = {"frames_per_s": round(bare)}
        rows["lstmp"]["step_over_bare_lstm"] = round(rows["lstmp"]["frames_per_s"] / bare, 3)
        if args.workdir:
            for system, opts in systems.items():
                rows[system]["epoch"] = epoch_rate(args.workdir, system, opts, args.frames - 40, device)
            rows["lstmp"]["epoch_over_bare_lstm"] = round(rows["lstmp"]["epoch"]["frames_per_s"] / bare, 3)
        if args.chain_tree:
            chain = chain_rates(
                args.chain_tree, args.lang, systems, args.feat_dim, args.batch, args.frames, device, args.repeats
            )
            for system in systems:
                rows[system].update(chain.pop(system))
                rows[system]["chain_step_over_step"] = round(
                    rows[system]["chain_step_frames_per_s"] / rows[system]["frames_per_s"], 3
                )
            rows["chain"] = chain
        report["devices"][device.type] = rows
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
