"""What every verb shares: its parser's shape (``--log-file``, ``--force``), the parallel verbs' job options
(``--nj``, ``--engine``: asrhybrid.jobs) and, for the training verbs, the frame that runs a training alone or
under torchrun, once (asrhybrid.outputs' completion marker)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from asrhybrid.errors import ConfigError
from asrhybrid.jobs import ENGINES, JobsConfig
from asrhybrid.nnet.trainer import default_device
from asrhybrid.options import parse_options
from asrhybrid.outputs import Completion

log = logging.getLogger("asrhybrid")


def add_verb(sub, name: str, what: str) -> argparse.ArgumentParser:
    """A verb's parser; ``what`` (what it does, what it writes) is both its line in the list and its --help.

    argparse %-formats a subcommand's ``help`` (for ``%(prog)s``), so a literal ``%`` (as in ``%WER``) is doubled
    there; ``description`` is formatted only when it names ``%(prog)``."""
    return sub.add_parser(name, help=what.replace("%", "%%"), description=what)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-file", type=Path, help="also write the log here (the recipe runner sets exp/.../log/)")
    p.add_argument("--force", action="store_true", help="redo the work even if it finished before")


def add_jobs(p: argparse.ArgumentParser, nj: int | None = 1, what: str = "jobs", workers: int | None = None) -> None:
    """A parallel verb's job options: how many jobs (none where its input decides: one per lattice archive),
    and the engine they run on (asrhybrid.jobs)."""
    if nj is not None:
        p.add_argument("--nj", type=int, default=nj, help=what)
    p.add_argument("--engine", default="local", choices=ENGINES, help="where the jobs run (default: this machine)")
    p.add_argument("--address", help="dask: the scheduler (tcp://host:8786); none: a LocalCluster")
    p.add_argument(
        "--workers",
        type=int,
        default=workers,
        help=f"local processes or LocalCluster workers (default: {workers or 'min(jobs, cores)'})",
    )
    p.add_argument("--max-retries", type=int, default=2, help="tries again for a job that failed or was lost")
    p.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="submitit/Slurm: partition, account, qos, time_min, mem_gb, cpus_per_task, gpus_per_node, cluster",
    )


def jobs_config(args: argparse.Namespace) -> JobsConfig:
    """The engine of ``add_jobs``' options."""
    return JobsConfig(
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        max_retries=args.max_retries,
        slurm=parse_options(args.slurm),
    )


def nj_option(nj: int) -> dict:
    """``nj`` as a step's option where the jobs' batches change its numbers' last digits (decode-e2e, adapt-am):
    one job keeps the key of the steps made before jobs, so their markers stay valid."""
    return {"nj": nj} if nj != 1 else {}


def train_config(cls, args: argparse.Namespace, verb: str):
    """A training verb's config: ``--opt`` fields, ``--system`` and ``--model-opt`` model options."""
    options = {**parse_options(args.opt), "system": args.system, "model": parse_options(args.model_opt)}
    try:
        return cls(**options)
    except TypeError as e:
        raise ConfigError(f"{verb}: bad option: {e}") from None


def completion_options(cfg) -> dict:
    """A training config as its run's completion key: its fields, less those added later (``KEYED_WHEN_SET``)
    where they are not given, so that runs made before them stay done."""
    options = asdict(cfg)
    for name in getattr(cfg, "KEYED_WHEN_SET", ()):
        if not options[name]:
            del options[name]
    return options


def run_training(args: argparse.Namespace, verb: str, cfg, inputs: dict, train) -> None:
    """The training verbs' frame: ``train(device, resume_key)`` under torchrun or alone, unless ``verb`` already
    finished in EXP_DIR with ``cfg`` and ``inputs``. The first worker decides (and alone writes the marker);
    checkpoints resume into more epochs."""

    done = Completion(args.exp_dir, verb, completion_options(cfg), inputs=inputs)
    with _data_parallel(args.device) as (rank, device):
        skip, resume_key = _first_worker_decides(lambda: (done.is_done(args.force), done.resume_key("epochs")))
        if skip:
            log.info("%s: '%s' already done", args.exp_dir, verb)
            return
        train(device, resume_key)
        if rank == 0:
            done.mark_done()


@contextlib.contextmanager
def _data_parallel(device_arg: str):
    """(rank, device) of this process; under torchrun (WORLD_SIZE > 1) inside a process group: gloo on CPU,
    NCCL on CUDA, one GPU per worker (workers after the first log warnings only: run_verb)."""

    device = default_device() if device_arg == "auto" else torch.device(device_arg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield 0, device
        return

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    log.info("data-parallel training: %d workers (%s)", world, dist.get_backend())
    try:
        yield rank, device
    finally:
        dist.destroy_process_group()


def _first_worker_decides(decide):
    """``decide()`` on the first worker, its answer broadcast to all (or just ``decide()`` alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return decide()
    box = [decide() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
