"""Memory and time of stages 1 (fbank), 4 (flat start) and 5 (tree) as the corpus grows: synth corpora of
0.25 h, 0.5 h and 1 h of training speech, each stage run as its own process (`asrhybrid run-recipe`).

Prints JSON: per size, each stage's wall time and peak RSS (of the stage's processes, from wait4), and the
ratios of the largest size to the smallest. Targets (issue "Stages 0-5 a user can trust at scale"): peak
RSS at 1 h at most 1.3x that at 0.25 h, time about linear (ratio about 4).

    python bench/scale.py [--hours 0.25 0.5 1.0] [--workdir /tmp/scale]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = {1: "fbank", 4: "flat start", 5: "tree"}


def run_stage(recipe: Path, workdir: Path, stage: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one stage in a process of its own."""
    cmd = [
        sys.executable,
        "-m",
        "asrhybrid.cli",
        "run-recipe",
        str(recipe),
        "--workdir",
        str(workdir),
        "--stage",
        str(stage),
        "--stop-stage",
        str(stage),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--workdir", type=Path, help="keep the corpora and outputs here (default: a temporary dir)")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="asrhybrid-scale-"))
    base = yaml.safe_load((REPO / "recipes" / "synth" / "config.yaml").read_text())
    results = {}
    for hours in args.hours:
        config = {**base, "synth": {**base["synth"], "train_hours": hours, "dev_minutes": 1.0, "test_minutes": 1.0}}
        recipe = root / f"recipe_{hours}"
        recipe.mkdir(parents=True, exist_ok=True)
        (recipe / "config.yaml").write_text(yaml.safe_dump(config))
        work = root / f"work_{hours}"
        figures = {}
        for stage in range(0, 6):
            wall, rss = run_stage(recipe, work, stage)
            if stage in STAGES:
                figures[STAGES[stage]] = {"seconds": round(wall, 1), "peak_rss_mib": round(rss)}
        results[f"{hours}h"] = figures
        print(f"{hours} h: {figures}", file=sys.stderr)
    small, large = results[f"{args.hours[0]}h"], results[f"{args.hours[-1]}h"]
    out = {
        "train_hours": args.hours,
        "stages": results,
        "ratio_largest_to_smallest": {
            name: {
                "peak_rss": round(large[name]["peak_rss_mib"] / small[name]["peak_rss_mib"], 2),
                "time": round(large[name]["seconds"] / small[name]["seconds"], 2),
            }
            for name in STAGES.values()
        },
        "size_ratio": round(args.hours[-1] / args.hours[0], 2),
        "workdir": str(root),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
