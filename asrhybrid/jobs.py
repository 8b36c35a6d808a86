"""A stage's parallel work as jobs on an engine: processes on this machine, a Dask cluster, or Slurm (submitit).

Kaldi's words: a verb splits its work into ``nj`` jobs (``decode.1`` .. ``decode.N``), each a module-level
function with explicit, picklable arguments (a shard, input paths, the job's own output paths), and the engine
of the run decides where they run, as ``run.pl``/``queue.pl``/``slurm.pl`` do for Kaldi's ``--cmd``:

- ``local``: processes on this machine (the default; one job runs in this process);
- ``dask``: a dask.distributed cluster, at a scheduler's address or a ``LocalCluster`` of ``workers`` processes;
- ``slurm``: submitit's ``AutoExecutor`` (Slurm where ``sbatch`` is, its local executor elsewhere).

A job writes its own outputs atomically on the shared filesystem and its log to ``LOG_DIR/<job>.log``, every
attempt headed by a ``# <job> attempt K started ... on HOST pid PID`` line. The verb submits only the jobs whose
outputs are missing and merges when all have finished. A job that fails is retried up to ``max_retries`` times:
by the engine where it can (Dask reschedules a task whose worker died and retries one that raised), by this
module elsewhere; a job whose input is bad (an :class:`AsrHybridError`, the same on every try) is not retried.
A job that keeps failing stops the stage with :class:`JobsFailed`, naming the job, its error and its log,
after the other jobs have finished (their outputs are kept for the re-run).

Which job an utterance belongs to is :func:`job_of`: a hash of its id, the same on every machine.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from asrhybrid.errors import AsrHybridError, ConfigError

log = logging.getLogger(__name__)

ENGINES = ("local", "dask", "slurm")
_SLURM_KEYS = {  # the recipe's words -> submitit's AutoExecutor parameters
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "time_min": "timeout_min",
    "mem_gb": "mem_gb",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
}


def job_of(utt: str, nj: int) -> int:
    """The job (1..nj) an utterance belongs to."""
    return zlib.crc32(utt.encode("utf-8")) % nj + 1


class InJob:
    """``cuts.filter(InJob(job, nj))``: the cuts of one job (a picklable predicate: Lhotse warns on lambdas), by
    their ids or by ``key(cut)`` (a module-level function: the recording, so that a recording's TextGrid is one
    job's; the speaker, so that a speaker's adaptation is)."""

    def __init__(self, job: int, nj: int, key: Callable[[Any], str] | None = None):
        self.job, self.nj, self.key = job, nj, key

    def __call__(self, cut) -> bool:
        return job_of(self.key(cut) if self.key else cut.id, self.nj) == self.job


@dataclass(frozen=True)
class JobsConfig:
    """Where a stage's jobs run: the recipe's ``jobs:`` section, a parallel verb's ``--engine ...`` options."""

    engine: str = "local"
    address: str | None = None  # dask: a scheduler (tcp://host:8786); none: a LocalCluster on this machine
    workers: int | None = None  # local: processes; dask LocalCluster: worker processes (default: min(jobs, cores))
    max_retries: int = 2
    slurm: dict[str, Any] = field(default_factory=dict)  # partition, account, qos, time_min, mem_gb,
    # cpus_per_task, gpus_per_node, and cluster: slurm (default: submitit's choice), local or debug

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ConfigError(f"jobs: engine '{self.engine}' is not one of {', '.join(ENGINES)}")
        if self.max_retries < 0:
            raise ConfigError(f"jobs: max_retries {self.max_retries} < 0")
        unknown = set(self.slurm) - set(_SLURM_KEYS) - {"cluster"}
        if unknown:
            raise ConfigError(f"jobs.slurm: unknown {sorted(unknown)} (known: cluster, {', '.join(_SLURM_KEYS)})")

    def on_device(self, device: str) -> JobsConfig:
        """The engine for work on ``device``: a local engine runs jobs on a GPU one after another in this
        process (one process owns the GPU); Dask and Slurm jobs find their own."""
        if str(device) == "cpu" or self.engine != "local":
            return self
        return JobsConfig(workers=1, max_retries=self.max_retries)


@dataclass(frozen=True)
class Job:
    """``fn(**kwargs)`` under the name ``name`` (``decode.3``): fn a module-level function, kwargs picklable."""

    name: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]


def split_jobs(
    name: str, fn: Callable[..., Any], nj: int, shared: dict[str, Any], own: Callable[[int], dict] | None = None
) -> list[Job]:
    """Kaldi's ``name.1`` .. ``name.NJ``: ``fn(**shared, job=j, nj=nj, **own(j))`` each."""
    return [Job(f"{name}.{j}", fn, {**shared, "job": j, "nj": nj, **(own(j) if own else {})}) for j in range(1, nj + 1)]


def unfinished(jobs: list[Job], marker: Callable[[int], Path], what: str) -> list[Job]:
    """The jobs (of :func:`split_jobs`) whose ``marker(job number)`` file, written last by a job, is missing."""
    todo = [job for job in jobs if not marker(job.kwargs["job"]).is_file()]
    if len(todo) < len(jobs):
        log.info("%s: %d of %d jobs finished before", what, len(jobs) - len(todo), len(jobs))
    return todo


class JobsFailed(AsrHybridError):
    def __init__(self, failures: dict[str, str], logs: dict[str, Path]):
        self.failures = failures
        lines = [
            f"job {name} failed: {error.strip().splitlines()[-1]} (log: {logs[name]})"
            for name, error in failures.items()
        ]
        super().__init__("\n".join(lines) + "\nthe other jobs' outputs are kept: a re-run redoes only these")


def run_jobs(jobs: list[Job], cfg: JobsConfig, log_dir: Path | str, desc: str = "jobs") -> dict[str, Any]:
    """Run ``jobs`` on ``cfg``'s engine; return each job's result by name, or raise JobsFailed when any job
    still fails after its retries (the others run to the end first)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = {job.name: log_dir / f"{job.name}.log" for job in jobs}
    for path in logs.values():  # a job's log is of this run's attempts (Kaldi overwrites its logs too)
        path.unlink(missing_ok=True)
    run = {"local": _run_local, "dask": _run_dask, "slurm": _run_slurm}[cfg.engine]
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    with tqdm(total=len(jobs), desc=desc, unit="job", leave=False) as bar:

        def finished(job: Job, outcome: dict | None, error: str | None) -> None:
            bar.update(1)
            error = error if outcome is None else outcome["input_error"]
            if error is not None:
                failures[job.name] = error
                log.error("job %s failed: %s (log: %s)", job.name, error.strip().splitlines()[-1], logs[job.name])
                return
            results[job.name] = outcome["result"]
            if outcome["attempt"] > 1:
                log.warning("job %s finished at attempt %d (%s)", job.name, outcome["attempt"], logs[job.name])
            if outcome["pid"] != os.getpid():  # its warnings were written to its log only
                _relay_warnings(job.name, logs[job.name])

        run(jobs, cfg, logs, finished)
    if failures:
        raise JobsFailed(failures, logs)
    return results


def execute(job: Job, log_path: str) -> dict:
    """Run one job (on whatever machine the engine chose) with its log in ``log_path``; returns its result,
    attempt number and process. A bad input (AsrHybridError) is returned as ``input_error``, not raised, so no
    engine retries it. Module-level, so every engine can pickle it by reference."""
    path = Path(log_path)
    attempt = 1 + _attempts(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(
            f"# {job.name} attempt {attempt} started {time.strftime('%F %T')} on {socket.gethostname()} "
            f"pid {os.getpid()}\n"
        )
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    thread = threading.get_ident()  # a Dask worker may run other tasks in other threads: only this one's records
    handler.addFilter(lambda record: record.thread == thread)
    logger = logging.getLogger("asrhybrid")
    level = logger.level
    logger.addHandler(handler)
    if not level or level > logging.INFO:
        logger.setLevel(logging.INFO)
    start = time.perf_counter()
    outcome = {"result": None, "attempt": attempt, "pid": os.getpid(), "input_error": None}
    try:
        outcome["result"] = job.fn(**job.kwargs)
    except AsrHybridError as e:
        logger.error("%s", e)
        outcome["input_error"] = f"{type(e).__name__}: {e}"
    except BaseException:
        logger.error("%s", traceback.format_exc())
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"# {job.name} attempt {attempt} ended after {time.perf_counter() - start:.1f} s\n")
    return outcome


def _attempts(log_path: Path) -> int:
    if not log_path.is_file():
        return 0
    return sum(line.startswith("# ") and " started " in line for line in log_path.read_text().splitlines())


def _relay_warnings(name: str, log_path: Path) -> None:
    if not log_path.is_file():
        return
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        if " WARNING [" in line or " ERROR [" in line:
            log.warning("[%s] %s", name, line.split("] ", 1)[-1])


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc))


def _retry_rounds(jobs: list[Job], cfg: JobsConfig, finished, run_round) -> None:
    """The retries for engines without their own: ``run_round(jobs)`` yields (job, outcome, exception) as each
    ends; a job that raised or whose process died runs again, up to ``max_retries`` times."""
    pending = list(jobs)
    for round_ in range(cfg.max_retries + 1):
        again = []
        for job, outcome, exc in run_round(pending):
            if exc is None:
                finished(job, outcome, None)
            elif round_ == cfg.max_retries:
                finished(job, None, _error_text(exc))
            else:
                log.warning(
                    "job %s: %s; retrying (%d of %d)", job.name, _error_text(exc).strip(), round_ + 1, cfg.max_retries
                )
                again.append(job)
        pending = again
        if not pending:
            return


def _run_local(jobs: list[Job], cfg: JobsConfig, logs: dict[str, Path], finished) -> None:
    workers = min(len(jobs), cfg.workers or os.cpu_count() or 1)

    def in_process(pending):
        for job in pending:
            try:
                yield job, execute(job, str(logs[job.name])), None
            except Exception as e:  # noqa: BLE001 - any failure of a job is the job's, reported by name
                yield job, None, e

    def in_pool(pending):
        # spawn: the parent holds k2/torch thread pools that a forked child would inherit broken
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(execute, job, str(logs[job.name])): job for job in pending}
            for future in as_completed(futures):
                exc = future.exception()  # a dead worker breaks the pool: every unfinished job gets BrokenProcessPool
                yield futures[future], (None if exc else future.result()), exc

    _retry_rounds(jobs, cfg, finished, in_process if workers <= 1 else in_pool)


def _run_dask(jobs: list[Job], cfg: JobsConfig, logs: dict[str, Path], finished) -> None:
    # imported here: distributed takes a second to import and only this engine needs it
    import dask
    from distributed import Client, LocalCluster
    from distributed import as_completed as dask_completed

    # a task whose worker dies is rescheduled by the scheduler, up to allowed-failures times (then KilledWorker);
    # one that raises is retried by the scheduler through submit(retries=). Workers are not daemons, so that
    # a job may start processes of its own (the synthetic corpus's eSpeak; a daemon may have no children).
    settings = {"distributed.scheduler.allowed-failures": cfg.max_retries, "distributed.worker.daemon": False}
    chatter = logging.getLogger("distributed")  # its INFO lines (workers starting, connections) are not the stage's
    level = chatter.level
    chatter.setLevel(max(logging.WARNING, level))
    cluster = client = None
    try:
        with dask.config.set(settings):
            if cfg.address:
                client = Client(cfg.address)
            else:
                n = min(len(jobs), cfg.workers or os.cpu_count() or 1)
                cluster = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                client = Client(cluster)
            run_id = uuid.uuid4().hex[:8]
            futures = {
                client.submit(
                    execute, job, str(logs[job.name]), key=f"{job.name}-{run_id}", pure=False, retries=cfg.max_retries
                ): job
                for job in jobs
            }
            for future in dask_completed(futures):
                job = futures[future]
                if future.status == "finished":
                    finished(job, future.result(), None)
                else:
                    finished(job, None, _error_text(future.exception()))
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        chatter.setLevel(level)


def _run_slurm(jobs: list[Job], cfg: JobsConfig, logs: dict[str, Path], finished) -> None:
    executor = _slurm_executor(cfg, next(iter(logs.values())).parent / "submitit")

    def round_(pending):
        submitted = [(job, executor.submit(execute, job, str(logs[job.name]))) for job in pending]
        for job, handle in submitted:
            try:
                yield job, handle.result(), None
            except Exception as e:  # noqa: BLE001 - FailedJobError / UncompletedJobError: the job's
                yield job, None, e

    _retry_rounds(jobs, cfg, finished, round_)


def run_distributed(
    fn: Callable[..., Any], args: list, nnodes: int, nproc: int, cfg: JobsConfig, log_dir: Path | str, name: str
) -> None:
    """``fn(*args)`` in each of ``nnodes`` x ``nproc`` processes of one data-parallel group, as one Slurm
    allocation through submitit (``cfg.engine`` slurm; ``slurm: {cluster: local}`` runs its tasks here). Each
    task gets torch.distributed's ``env://`` variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT:
    submitit's TorchDistributedEnvironment), as torchrun's workers do. A failed or lost allocation is
    submitted again up to ``max_retries`` times (the training resumes from its checkpoints)."""
    if cfg.engine != "slurm":
        raise ConfigError(
            f"{name}: training over {nnodes} nodes runs as one Slurm allocation (jobs: {{engine: slurm}}), or start "
            f"torchrun on each node yourself: torchrun --nnodes {nnodes} --nproc-per-node {nproc} "
            "--rdzv-backend c10d --rdzv-endpoint HOST:29400 -m asrhybrid VERB ..."
        )
    log_dir = Path(log_dir)
    executor = _slurm_executor(cfg, log_dir / "submitit", name=name, nodes=nnodes, tasks_per_node=nproc)
    for attempt in range(cfg.max_retries + 1):
        job = executor.submit(_distributed_task, fn, args)
        log.info("%s: %d x %d workers as submitit job %s (logs: %s)", name, nnodes, nproc, job.job_id, log_dir)
        try:
            job.results()  # every task's: any task's failure is the allocation's
            return
        except Exception as e:  # noqa: BLE001 - FailedJobError / UncompletedJobError: the allocation's
            error = _error_text(e)
            if attempt == cfg.max_retries:
                raise JobsFailed({name: error}, {name: log_dir / "submitit"}) from None
            log.warning("%s: %s; submitting again (%d of %d)", name, error.strip(), attempt + 1, cfg.max_retries)


def _slurm_executor(cfg: JobsConfig, folder: Path, **parameters):
    """submitit's AutoExecutor with the ``slurm:`` options (and ``parameters``), its files in ``folder``."""
    # imported here: only this engine needs submitit
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cfg.slurm.get("cluster"))
    executor.update_parameters(**parameters, **{_SLURM_KEYS[k]: v for k, v in cfg.slurm.items() if k != "cluster"})
    return executor


def _distributed_task(fn: Callable[..., Any], args: list) -> Any:
    # imported here: this runs inside a submitit task
    from submitit.helpers import TorchDistributedEnvironment

    # the device follows LOCAL_RANK, as under torchrun (not CUDA_VISIBLE_DEVICES)
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return fn(*args)
