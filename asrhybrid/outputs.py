"""Crash-safe stage outputs: temporary names, atomic renames, completion markers.

Every file a stage writes goes to a hidden temporary sibling first and is
renamed into place only when complete, so a killed stage never leaves a
half-written file under its final name.

A step that finishes writes one completion marker (``.done.<step>.json``
in its output directory), the project's one scheme, like make's targets:

- ``params``: the options its outputs depend on. A re-run with the same
  options is a no-op; with other options it is refused unless forced
  (Kaldi would silently reuse stale outputs; we would rather say so).
- ``inputs``: a stamp of each input, by role. An input another step made
  has that step's marker stamp (a new one each time the step runs); any
  other file its content digest, any other directory a digest of its file
  listing (names, sizes, mtimes: corpora are too large to read). A changed
  stamp makes the step redo its work on the next run, so redoing stage 2
  makes the stages that read its outputs redo too.
- ``outputs``: what it wrote (relative to its directory, or a file name
  pattern there; "." for all of it),
  so that a later step reading one of them finds this marker.
- ``stamp``: new each time the step finishes.

Resumable steps (the synthetic corpus, feature chunks, flat-start
iterations) keep their partial work only when it was made with the same
options and inputs: the verb hands the library function
``done.resume_key()`` (:func:`resume_or_clear`).

Markers are the verb layer's business (:func:`run_once`, asrhybrid.verbs);
the library functions only compute.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from asrhybrid.errors import StaleOutputError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp"
MARKER_GLOB = ".done.*.json"


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffixes (lhotse picks formats by them)."""
    return path.parent / f"{TMP_PREFIX}{os.getpid()}.{path.name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left in ``directory`` by killed runs (those of live processes stay)."""
    if not directory.is_dir():
        return
    for p in directory.glob(f"{TMP_PREFIX}*.*"):
        pid = p.name[len(TMP_PREFIX) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` if the block succeeds.

    Works for files and directories. On an exception the temporary is removed
    and whatever stood at ``path`` before is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if path.is_dir() and tmp.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _canonical(value: Any) -> Any:
    """Paths (and strings naming existing files) as absolute paths, so work/x and /abs/work/x compare equal."""
    if isinstance(value, Path) or (isinstance(value, str) and value and os.path.exists(value)):
        return str(Path(value).resolve())
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _digest(*parts: str) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


_file_digests: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _file_digests:
        h = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _file_digests[key] = h.hexdigest()[:16]
    return _file_digests[key]


def _read_marker(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "stamp" in data else None


def _claiming_marker(path: Path) -> dict | None:
    """The marker of the step that wrote ``path`` (the nearest directory up whose marker lists it), if any."""
    for directory in [path] * path.is_dir() + list(path.parents)[:4]:
        for marker_path in sorted(directory.glob(MARKER_GLOB)):
            marker = _read_marker(marker_path)
            if marker is None:
                continue
            for out in marker.get("outputs", []):
                target = (directory / out).resolve()
                if (
                    path == target
                    or target in path.parents
                    or (path.parent == directory.resolve() and fnmatch.fnmatchcase(path.name, out))
                ):
                    return marker
    return None


def input_stamp(path: Path | str) -> str:
    """What an input is, for markers: the stamp of the step that wrote it, else a digest of it."""
    path = Path(path).resolve()
    marker = _claiming_marker(path)
    if marker is not None:
        return f"step:{marker['stamp']}"
    if path.is_file():
        return f"file:{_file_digest(path)}"
    if path.is_dir():
        listing = sorted(
            f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )
        return f"dir:{_digest(*listing)}"
    return "missing"


class Completion:
    """The completion marker of one step writing into ``directory``.

    ``params`` (JSON-serialisable) are the options the outputs depend on;
    ``inputs`` the paths it reads, by role; ``outputs`` what it writes,
    relative to ``directory`` ("." for everything in it).
    """

    def __init__(
        self,
        directory: Path | str,
        step: str,
        params: dict[str, Any],
        inputs: dict[str, Path | str] | None = None,
        outputs: list[str] | tuple[str, ...] = (".",),
    ):
        self.directory = Path(directory)
        self.step = step
        self.params = json.loads(json.dumps({k: _canonical(v) for k, v in params.items()}, sort_keys=True, default=str))
        self.inputs = {role: input_stamp(p) for role, p in sorted((inputs or {}).items())}
        self.outputs = list(outputs)
        self.path = self.directory / f".done.{step}.json"
        self.forced = False

    def resume_key(self, *except_options: str) -> str | None:
        """What partial work must share to be resumed: the options (but ``except_options``, which it may
        differ in: a flat start resumes into more iterations) and the inputs; None when forced (start over)."""
        if self.forced:
            return None
        params = {k: v for k, v in self.params.items() if k not in except_options}
        return _digest(json.dumps(params, sort_keys=True), json.dumps(self.inputs, sort_keys=True))

    def is_done(self, force: bool = False) -> bool:
        """True when this step already finished with the same options and inputs.

        Raises StaleOutputError if it finished with other options and
        ``force`` is not set; with ``force``, or when an input changed, the
        marker is removed (said in the log) and the step is to run again.
        """
        self.forced = force
        if not self.path.exists():
            return False
        if force:
            self.path.unlink()
            return False
        previous = _read_marker(self.path)
        if previous is None:
            log.info("%s: the marker of '%s' is from an older asrhybrid: redoing it", self.directory, self.step)
            self.path.unlink()
            return False
        old_params = {k: _canonical(v) for k, v in previous["params"].items()}
        if old_params != self.params:
            changed = sorted(k for k in set(old_params) | set(self.params) if old_params.get(k) != self.params.get(k))
            raise StaleOutputError(
                f"{self.directory} holds outputs of '{self.step}' made with other options "
                f"(changed: {', '.join(changed)}); re-run with --force (make ... force=1) to redo it"
            )
        old_inputs = previous.get("inputs", {})
        if old_inputs != self.inputs:
            changed = sorted(k for k in set(old_inputs) | set(self.inputs) if old_inputs.get(k) != self.inputs.get(k))
            log.info(
                "%s: inputs of '%s' changed since it ran (%s): redoing it",
                self.directory,
                self.step,
                ", ".join(changed),
            )
            self.path.unlink()
            return False
        return True

    def mark_done(self) -> None:
        marker = {
            "step": self.step,
            "params": self.params,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "stamp": uuid.uuid4().hex,
        }
        write_text_atomic(self.path, json.dumps(marker, indent=1, sort_keys=True) + "\n")


def run_once(
    directory: Path | str,
    step: str,
    params: dict[str, Any],
    force: bool,
    work: Callable[[Completion], Any],
    inputs: dict[str, Path | str] | None = None,
    outputs: list[str] | tuple[str, ...] = (".",),
) -> bool:
    """The verb layer's one way to run a step: ``work(done)`` unless ``step`` already finished in ``directory``
    with ``params`` and ``inputs`` (``done.resume_key()`` is what resumable work must share); True if it ran."""
    done = Completion(directory, step, params, inputs, outputs)
    if done.is_done(force):
        log.info("%s: '%s' already done", directory, step)
        return False
    work(done)
    done.mark_done()
    return True


RESUME_RECORD = ".resume.json"


def resume_or_clear(folder: Path, key: str | None) -> None:
    """Keep the partial work in ``folder`` only if it was made under ``key`` (never when ``key`` is None:
    a forced or unkeyed run starts over); else empty the folder (said in the log). Then record ``key``."""
    folder = Path(folder)
    record = folder / RESUME_RECORD
    try:
        old = json.loads(record.read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        old = None  # no record: whatever is there was not made by a run that wrote one
    if key is None or old != key:
        if old is not None and key is not None:
            log.info("%s: partial work made with other options or inputs: starting over", folder)
        if folder.exists():
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if key is not None:
        write_text_atomic(record, json.dumps({"key": key}) + "\n")


def last_checkpoint(paths: list[tuple[int, Path]], resume_key: str | None) -> tuple[int, dict | None]:
    """(N, checkpoint) of the highest-numbered existing checkpoint among ``paths`` [(N, path)] when it was
    written under ``resume_key`` (its "resume_key" entry), else (0, None): other options or inputs start over."""
    if resume_key is None:
        return 0, None
    for number, path in sorted(paths, reverse=True):
        if not Path(path).is_file():
            continue
        checkpoint = torch.load(path, weights_only=False)
        if not isinstance(checkpoint, dict) or checkpoint.get("resume_key") != resume_key:
            log.info("%s was made with other options or inputs: starting over", path)
            return 0, None
        return number, checkpoint
    return 0, None
