#!/usr/bin/env python3
"""How far a recipe's WERs move with the seed and the CPU kernels: stages N..M over seeds x kernel settings.

    python local/spread.py recipes/yesno --corpus-dir PATH/waves_yesno --workdir /tmp/spread \
        --seeds 0 1 2 3 4 --kernels avx2 default --stage 4 --stop-stage 10

Stages before ``--stage`` run once, in WORKDIR/base; each run copies that workdir's data/ and runs the rest with every
training's seed set (align.seed, am.common.seed, decode.adapt.seed, e2e.common.seed) under a kernel setting
(KERNELS: avx2, what asrhybrid pins on any AVX2 machine; default, what torch runs on a CPU without AVX). It prints one JSON object per
run as it ends and, last, a Markdown table of every scored decode dir's WER (rows) by run (columns) with each
row's range, and writes both under WORKDIR. A later range of stages (``--stage 9``) goes on in the same run
workdirs; a finished run is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def seeded_recipe(recipe: Path, seed: int, out: Path) -> Path:
    """A copy of the recipe's config with every training's seed set to ``seed``."""
    config = yaml.safe_load((recipe / "config.yaml").read_text())
    config.setdefault("align", {})["seed"] = seed
    config.setdefault("am", {}).setdefault("common", {})["seed"] = seed
    if isinstance((config.get("decode") or {}).get("adapt"), dict):
        config["decode"]["adapt"]["seed"] = seed
    if config.get("e2e"):
        config["e2e"].setdefault("common", {})["seed"] = seed
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


# a kernel setting -> the variables that make this machine compute as one with that instruction set does
# (torch's ATen dispatch, oneDNN's convolutions; MKL's GEMM path did not change with its ISA on an AVX2 EPYC)
KERNELS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41"},
}


def kernel_env(setting: str) -> dict[str, str]:
    return {**os.environ, **KERNELS[setting], "PYTHONUNBUFFERED": "1"}


def run_recipe(recipe: Path, workdir: Path, stage: int, stop: int, corpus_dir: Path, env: dict, log: Path) -> float:
    start = time.time()
    with log.open("w") as out:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "asrhybrid",
                "run-recipe",
                str(recipe),
                "--workdir",
                str(workdir),
                "--stage",
                str(stage),
                "--stop-stage",
                str(stop),
                "--corpus-dir",
                str(corpus_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if result.returncode != 0:
        raise SystemExit(f"{workdir}: stages {stage}-{stop} failed; see {log}")
    return time.time() - start


def wers(workdir: Path) -> dict[str, float]:
    """exp/<system>/<decode dir> -> WER, for every scored decode dir."""
    return {
        str(p.parent.relative_to(workdir / "exp")): json.loads(p.read_text())["wer"]
        for p in sorted((workdir / "exp").glob("*/decode_*/scoring.json"))
    }


def table(runs: dict[str, dict[str, float]]) -> str:
    names = list(runs)
    rows = sorted({row for r in runs.values() for row in r})
    lines = ["| decode dir | " + " | ".join(names) + " | min | max |", "|---" * (len(names) + 3) + "|"]
    for row in rows:
        values = [runs[n].get(row) for n in names]
        present = [v for v in values if v is not None]
        cells = [f"{v:.2f}" if v is not None else "-" for v in values]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {min(present):.2f} | {max(present):.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--corpus-dir", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    p.add_argument("--stage", type=int, default=4)
    p.add_argument("--stop-stage", type=int, default=10)
    p.add_argument(
        "--base-stop-stage",
        type=int,
        default=None,
        help="the last stage of the shared base run (default: the one before --stage; 3 for --stage 9, whose "
        "end-to-end systems read only data/)",
    )
    args = p.parse_args()
    base_stop = args.stage - 1 if args.base_stop_stage is None else args.base_stop_stage
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = args.workdir / "base"
    if args.stage > 0 and not (base / ".spread-done").exists():
        run_recipe(args.recipe, base, 0, base_stop, args.corpus_dir, kernel_env("avx2"), args.workdir / "base.log")
        (base / ".spread-done").write_text("")
    runs: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        for kernels in args.kernels:
            name = f"seed{seed}-{kernels}"
            work = args.workdir / name
            done = work / f".spread-done-{args.stage}-{args.stop_stage}"  # a later range goes on in the same workdir
            if not done.exists():
                if not work.exists() and args.stage > 0:
                    shutil.copytree(base / "data", work / "data", symlinks=True)
                recipe = seeded_recipe(args.recipe, seed, args.workdir / "recipes" / name)
                seconds = run_recipe(
                    recipe,
                    work,
                    args.stage,
                    args.stop_stage,
                    args.corpus_dir,
                    kernel_env(kernels),
                    args.workdir / f"{name}-{args.stage}-{args.stop_stage}.log",
                )
                done.write_text(f"{seconds:.0f}\n")
            runs[name] = wers(work)
            print(json.dumps({"run": name, "seconds": float(done.read_text()), "wer": runs[name]}), flush=True)
    (args.workdir / "spread.json").write_text(json.dumps(runs, indent=1))
    text = table(runs)
    (args.workdir / "spread.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
