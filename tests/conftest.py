"""Shared fixtures. Data from ../shared is optional: tests that need it skip cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import asrhybrid  # noqa: F401  before any test module loads torch: asrhybrid/kernels.py's variables are read then

REPO = Path(__file__).resolve().parents[1]

# The longest modules first: `make test` runs modules on pytest-xdist workers in this order (--dist loadfile
# --no-loadscope-reorder), so the two start at once and the short modules fill in beside them. xdist hands each
# worker two modules at the start: the first worker's second module (the first of the rest) waits for the
# longest module to end, hence a short one there (test_align_outputs.py, by name).
LONGEST_FIRST = ("test_recipe_yesno_e2e.py", "test_recipe_yesno.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module stays in one piece


def run_make(*args: str, timeout: int) -> subprocess.CompletedProcess:
    """``make -C REPO VENV=<the tests' venv> ARGS``, captured, in a process group of its own: when this timeout or
    pytest-timeout's ends the test, make and everything it started are killed, so no orphan goes on holding a
    workdir's lock (or the CPU) while the next test runs."""
    venv = Path(sys.executable).parent.parent  # the interpreter running the tests is the venv's
    proc = subprocess.Popen(
        ["make", "-C", str(REPO), f"VENV={venv}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


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
        if os.environ.get("CI") == "true":  # CI always has ../shared: a skip there would hide a failure
            pytest.fail(f"shared data {'/'.join(parts)} missing under CI=true")
        pytest.skip(f"shared data {'/'.join(parts)} not available (set ASRHYBRID_SHARED)")
    return path


def require_k2():
    """k2, which `make setup` always builds: a skip with a message on a machine without it, a failure under CI."""
    try:
        import k2
    except ImportError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"k2 does not import under CI=true ({e}); make setup must build it")
        pytest.skip(f"k2 is not installed ({e}); run make setup")
    return k2


@pytest.fixture
def yesno_dir() -> Path:
    return require_shared("corpora", "yesno", "waves_yesno")


@pytest.fixture
def fsdd_dir() -> Path:
    return require_shared("corpora", "fsdd", "recordings")


@pytest.fixture
def yesno_fbank_cuts(yesno_dir, tmp_path):
    """Cuts of four real yesno files with their 23-bin fbank on disk, two "speakers" (a, b) of two each."""
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet

    from asrhybrid.features.fbank import KaldiFbank, KaldiFbankConfig

    recordings = RecordingSet.from_recordings(list(RecordingSet.from_dir(yesno_dir, "*.wav"))[:4])
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(r.id, r.id, 0.0, r.duration, speaker="ab"[i % 2]) for i, r in enumerate(recordings)
    )
    return (
        CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
        .to_eager()
        .compute_and_store_features(
            KaldiFbank(KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)), tmp_path / "feats"
        )
    )


@pytest.fixture
def kaldi_feats_dir() -> Path:
    return require_shared("testdata", "kaldi_feats")


def asrhybrid_cmd() -> list[str]:
    """The CLI of the interpreter running the tests (the venv's)."""
    return [sys.executable, "-m", "asrhybrid.cli"]
