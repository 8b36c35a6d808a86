"""Shared fixtures. Data from ../shared is optional: tests that need it skip cleanly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """``$ASRHYBRID_SHARED`` or the ``shared`` folder beside the checkout, if present."""
    candidates = [os.environ.get("ASRHYBRID_SHARED"), REPO.parent / "shared"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def require_shared(*parts: str) -> Path:
    base = shared_dir()
    path = base.joinpath(*parts) if base else None
    if path is None or not path.exists():
        pytest.skip(f"shared data {'/'.join(parts)} not available (set ASRHYBRID_SHARED)")
    return path


@pytest.fixture
def yesno_dir() -> Path:
    return require_shared("corpora", "yesno", "waves_yesno")


@pytest.fixture
def fsdd_dir() -> Path:
    return require_shared("corpora", "fsdd", "recordings")


@pytest.fixture
def kaldi_feats_dir() -> Path:
    return require_shared("testdata", "kaldi_feats")


def asrhybrid_cmd() -> list[str]:
    """The CLI of the interpreter running the tests (the venv's)."""
    return [sys.executable, "-m", "asrhybrid.cli"]
