"""The same seed trains the same model: CPU kernels pinned at import, training threads fixed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from asrhybrid.kernels import AVX2_KERNELS, cpu_flags, pin_cpu_kernels, sleep_idle_threads


def test_pin_sets_only_what_the_user_left_unset():
    env = {"ATEN_CPU_CAPABILITY": "default"}
    chosen = pin_cpu_kernels(env, flags={"avx2", "fma", "sse4_2"})
    if chosen == {} and env == {"ATEN_CPU_CAPABILITY": "default"}:  # not an x86-64 machine: nothing is pinned
        pytest.skip("not x86-64")
    assert env["ATEN_CPU_CAPABILITY"] == "default"  # the user's choice stands
    assert chosen == {k: v for k, v in AVX2_KERNELS.items() if k != "ATEN_CPU_CAPABILITY"}
    assert env == {**AVX2_KERNELS, "ATEN_CPU_CAPABILITY": "default"}


def test_pin_sets_nothing_without_avx2():
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, flags={"sse4_2", "avx"}) == {} and env == {}


def test_idle_threads_sleep_unless_the_user_chose():
    env: dict[str, str] = {}
    assert sleep_idle_threads(env) == {"OMP_WAIT_POLICY": "PASSIVE"} == env
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert sleep_idle_threads(env) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_cpu_flags_of_a_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_importing_asrhybrid_runs_the_avx2_kernels_on_an_avx2_machine():
    if not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU has no AVX2: nothing is pinned")
    env = {k: v for k, v in os.environ.items() if k not in AVX2_KERNELS}
    code = "import asrhybrid, torch, os; print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AVX2", "AVX2"]
    env["ATEN_CPU_CAPABILITY"] = "default"  # a user's choice is kept (how the spread imitates another machine)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[0] == "DEFAULT", out.stderr


def _train_dnn(tmp_path, name, num_threads, yesno_fbank_cuts):
    """A small DNN of stage 6 on planted targets of real features, a few epochs; its final weights."""
    import numpy as np

    from asrhybrid.kaldi_tables import alignment_table_writer
    from asrhybrid.nnet.inference import load_am
    from asrhybrid.nnet.train import TrainConfig, train_am

    cuts_path = tmp_path / "cuts.jsonl.gz"
    if not cuts_path.exists():
        yesno_fbank_cuts.to_file(cuts_path)
        rng = np.random.default_rng(0)
        with alignment_table_writer(tmp_path / "ali_pdf.ark") as write:
            for cut in yesno_fbank_cuts:
                write(cut.id, rng.integers(0, 4, cut.num_frames))
    feats = np.concatenate([c.load_features() for c in yesno_fbank_cuts])
    cfg = TrainConfig(
        system="dnn",
        epochs=3,
        max_duration=10,
        lr=3e-3,
        valid_fraction=0.25,
        num_threads=num_threads,
        model={"hidden": 64, "layers": 2},
    )
    before = torch.get_num_threads()
    try:
        summary = train_am(
            cuts_path,
            tmp_path / "ali_pdf.ark",
            4,
            {0},
            feats.mean(0),
            feats.std(0) + 1e-3,
            tmp_path / name,
            cfg,
            device="cpu",
        )
    finally:
        torch.set_num_threads(before)
    assert summary["kernels"]["threads"] == str(num_threads)
    model, _ = load_am(tmp_path / name)
    return model.state_dict()


def test_a_seed_trains_the_same_weights_with_any_thread_count(tmp_path, yesno_fbank_cuts):
    one = _train_dnn(tmp_path, "one", 1, yesno_fbank_cuts)
    three = _train_dnn(tmp_path, "three", 3, yesno_fbank_cuts)
    assert one.keys() == three.keys()
    assert all(torch.equal(one[k], three[k]) for k in one)
