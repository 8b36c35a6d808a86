"""Crash-safe stage outputs: temporary names, atomic renames, completion markers.

Every file a stage writes goes to a hidden temporary sibling first and is
renamed into place only when complete, so a killed stage never leaves a
half-written file under its final name. A stage that finishes writes a
completion marker holding the options it ran with: a re-run with the same
options is a no-op, a re-run with other options is refused unless forced
(Kaldi would silently reuse stale outputs; we would rather say so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from asrhybrid.errors import StaleOutputError

TMP_PREFIX = ".tmp"


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffixes (lhotse picks formats by them)."""
    return path.parent / f"{TMP_PREFIX}{os.getpid()}.{path.name}"


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by killed runs (any pid) in ``directory``."""
    if not directory.is_dir():
        return
    for p in directory.glob(f"{TMP_PREFIX}*.*"):
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


class Completion:
    """The completion marker of one step writing into ``directory``.

    ``params`` must be JSON-serialisable: they are the options the outputs
    depend on, compared on re-runs.
    """

    def __init__(self, directory: Path | str, step: str, params: dict[str, Any]):
        self.directory = Path(directory)
        self.step = step
        self.params = json.loads(json.dumps({k: _canonical(v) for k, v in params.items()}, sort_keys=True, default=str))
        self.path = self.directory / f".done.{step}.json"

    def is_done(self, force: bool = False) -> bool:
        """True when this step already finished with the same options.

        Raises StaleOutputError if it finished with other options and
        ``force`` is not set; with ``force`` the marker is removed.
        """
        if not self.path.exists():
            return False
        if force:
            self.path.unlink()
            return False
        previous = {k: _canonical(v) for k, v in json.loads(self.path.read_text(encoding="utf-8")).items()}
        if previous != self.params:
            changed = sorted(
                k for k in set(previous) | set(self.params) if previous.get(k) != self.params.get(k)
            )
            raise StaleOutputError(
                f"{self.directory} holds outputs of '{self.step}' made with other options "
                f"(changed: {', '.join(changed)}); re-run with --force (make ... force=1) to redo it"
            )
        return True

    def mark_done(self) -> None:
        write_text_atomic(self.path, json.dumps(self.params, indent=1, sort_keys=True) + "\n")


def run_once(directory: Path | str, step: str, params: dict[str, Any], force: bool, work) -> bool:
    """Run ``work()`` unless ``step`` already finished in ``directory`` with ``params``; True if it ran."""
    done = Completion(directory, step, params)
    if done.is_done(force):
        logging.getLogger(__name__).info("%s: '%s' already done", directory, step)
        return False
    work()
    done.mark_done()
    return True


def content_digest(*texts: str) -> str:
    """A short digest of inputs, for completion markers of steps whose inputs are text."""
    h = hashlib.sha1()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
