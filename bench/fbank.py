"""Fbank speed: our stage-1 path against kaldi-native-fbank and Lhotse's torch Fbank, in one run.

Prints JSON. All CPU figures are one thread on the same audio (default 10
minutes: 120 utterances of 5 s of a speech-like signal at 16 kHz, 80 bins):

- ours: asrhybrid.features.fbank.KaldiFbank.extract_batch (kaldifeat when
  installed, else kaldi-native-fbank), batches of 60 s;
- kaldi_native_fbank: its C++ compute only (accept_waveform + input_finished),
  not its per-frame Python copy loop;
- lhotse_fbank: lhotse.Fbank, pure torch;
- stage: the whole stage-1 verb on files (read WAV, compute, lilcom-compress,
  write, CMVN) with --num-jobs as given, as real-time factor;
- cuda: kaldifeat batched on the GPU when one is present.

Targets (issue 2): ours / kaldi_native_fbank >= 1.0 per core; stage >= 1000x real time on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asrhybrid.features.fbank import KALDI_SAMPLE_SCALE, KaldiFbank, KaldiFbankConfig, kaldifeat_available

RATE = 16000


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonics with a wandering pitch plus noise bursts: a signal with speech's spectral spread."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    f0 = 120 + 40 * np.sin(np.cumsum(rng.normal(0, 0.002, n)))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 20))
    x *= 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(n) / RATE)
    x += 0.3 * rng.standard_normal(n)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--utterance-seconds", type=float, default=5.0)
    parser.add_argument("--num-jobs", type=int, default=2, help="processes for the stage figure")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    count = int(args.minutes * 60 / args.utterance_seconds)
    waves = [speech_like(args.utterance_seconds, i) for i in range(count)]
    audio_seconds = count * args.utterance_seconds
    cfg = KaldiFbankConfig(sampling_rate=RATE, num_mel_bins=80, device="cpu")
    ours = KaldiFbank(cfg)
    frames = sum(f.shape[0] for f in ours.extract_batch(waves[:1], RATE)) * count
    per_batch = max(1, int(60 / args.utterance_seconds))

    def run_ours():
        for i in range(0, count, per_batch):
            ours.extract_batch(waves[i : i + per_batch], RATE)

    import kaldi_native_fbank as knf

    knf_opts = KaldiFbank(KaldiFbankConfig(sampling_rate=RATE, backend="kaldi-native-fbank"))._knf_opts
    scaled = [w * KALDI_SAMPLE_SCALE for w in waves]

    def run_knf():
        for w in scaled:
            fb = knf.OnlineFbank(knf_opts)
            fb.accept_waveform(float(RATE), w)
            fb.input_finished()

    from lhotse import Fbank, FbankConfig

    lhotse_fbank = Fbank(FbankConfig(sampling_rate=RATE, num_filters=80))

    def run_lhotse():
        for w in waves:
            lhotse_fbank.extract(w, RATE)

    t_ours, t_knf, t_lhotse = (best_of(f, args.repeats) for f in (run_ours, run_knf, run_lhotse))
    result = {
        "audio_seconds": audio_seconds,
        "frames": frames,
        "ours_backend": cfg.resolved_backend(),
        "ours_frames_per_s": round(frames / t_ours),
        "kaldi_native_fbank_frames_per_s": round(frames / t_knf),
        "lhotse_fbank_frames_per_s": round(frames / t_lhotse),
        "ratio_ours_vs_kaldi_native_fbank": round(t_knf / t_ours, 3),
        "ratio_ours_vs_lhotse_fbank": round(t_lhotse / t_ours, 3),
    }

    with tempfile.TemporaryDirectory() as tmp:
        result.update(stage_figures(Path(tmp), waves, args.num_jobs))
    if kaldifeat_available() and torch.cuda.is_available():
        result.update(cuda_figures(waves, frames, per_batch))
    print(json.dumps(result, indent=1))


def stage_figures(tmp: Path, waves: list[np.ndarray], num_jobs: int) -> dict:
    """The stage-1 verb end to end, on WAV files through a Kaldi data dir."""
    from asrhybrid.data.prepare import prepare_data
    from asrhybrid.features.compute import compute_fbank

    data = tmp / "corpus" / "bench"
    data.mkdir(parents=True)
    scp, text, utt2spk = [], [], []
    for i, w in enumerate(waves):
        path = tmp / f"u{i:04d}.wav"
        sf.write(path, w, RATE, subtype="PCM_16")
        scp.append(f"u{i:04d} {path}\n")
        text.append(f"u{i:04d} A\n")
        utt2spk.append(f"u{i:04d} s{i % 8}\n")
    (data / "wav.scp").write_text("".join(scp))
    (data / "text").write_text("".join(text))
    (data / "utt2spk").write_text("".join(utt2spk))
    prepare_data("bench", "kaldi", tmp / "corpus", tmp / "m", RATE)
    start = time.perf_counter()
    compute_fbank(
        tmp / "m",
        tmp / "f",
        "bench",
        "bench",
        KaldiFbankConfig(sampling_rate=RATE, device="cpu"),
        num_jobs=num_jobs,
        chunk_size=max(1, len(waves) // (2 * num_jobs)),
    )
    wall = time.perf_counter() - start
    seconds = sum(len(w) for w in waves) / RATE
    return {"stage_num_jobs": num_jobs, "stage_wall_s": round(wall, 2), "stage_real_time_factor": round(seconds / wall)}


def cuda_figures(waves: list[np.ndarray], frames: int, per_batch: int) -> dict:
    gpu = KaldiFbank(KaldiFbankConfig(sampling_rate=RATE, num_mel_bins=80, backend="kaldifeat", device="cuda"))
    tensors = [torch.from_numpy(w * KALDI_SAMPLE_SCALE).cuda() for w in waves]
    big = len(waves)

    def run():
        gpu.compute_kaldi_scaled(tensors[:big])
        torch.cuda.synchronize()

    run()
    t = best_of(run, 5)
    return {
        "cuda_device": torch.cuda.get_device_name(),
        "cuda_batch": big,
        "cuda_frames_per_s": round(frames / t),
        "cuda_real_time_factor": round(len(waves) * len(waves[0]) / RATE / t),
    }


if __name__ == "__main__":
    main()
