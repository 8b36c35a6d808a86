"""Logging: to stderr always, and to a stage's ``exp/<stage>/log/<verb>.log`` while it runs."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_asrhybrid", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        handler._asrhybrid = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


@contextlib.contextmanager
def log_to_file(path: Path | None) -> Iterator[None]:
    """Append the log to ``path`` (created with its folder) inside the block."""
    if path is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
