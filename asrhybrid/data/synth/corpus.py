"""The embedded default corpus: multi-speaker English speech synthesised offline.

``generate_corpus`` writes ``wav/<speaker>/<utt>.wav`` (16-bit PCM) and
``metadata.jsonl`` (one utterance a line: part, speaker, voice, text, SNR and
the synthesiser's word and phone timings) into a corpus directory, which
``asrhybrid.data.corpora.prepare_synth`` reads like any other corpus.

Speakers are eSpeak NG voices: an English accent, a voice variant, a speaking
rate and a pitch, drawn from the seed. Dev and test speakers never occur in
training. Every utterance is drawn from its own generator seeded by
``(seed, part, index)``, so the corpus is a pure function of its options and a
re-run after a kill rewrites the same bytes.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from lhotse.augmentation.resample import Resample
from tqdm import tqdm

from asrhybrid.data.synth.espeak import FreshSynthesizer, Synthesis
from asrhybrid.data.synth.grammar import generate_sentence
from asrhybrid.jobs import Job, JobsConfig, run_jobs
from asrhybrid.outputs import atomic_output, remove_stale_temporaries, resume_or_clear, write_text_atomic

log = logging.getLogger(__name__)

ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]
# Human-sounding eSpeak variants (the robotic, whispered and novelty ones are left out).
VARIANTS = """m1 m2 m3 m4 m5 m6 m7 m8 f1 f2 f3 f4 f5 Alex Andy Annie Denis Gene Jacky Lee Mike adam
    anika aunty belinda benjamin boris caleb david ed edward grandma grandpa ian iven john linda max
    michel norbert paul pedro quincy rob robert steph travis victor zac""".split()
PARTS = ("train", "dev", "test")


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    num_speakers: int = 32
    dev_speakers: int = 4
    test_speakers: int = 4
    train_hours: float = 1.0
    dev_minutes: float = 5.0
    test_minutes: float = 5.0
    sampling_rate: int = 16000
    noise_prob: float = 0.3  # share of utterances with additive noise
    snr_db: tuple[float, float] = (5.0, 20.0)  # uniform range of their SNR
    # A test corpus of a few utterances: cap utterances per part (0 = no cap).
    max_utterances_per_part: int = 0


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str
    rate: int  # words per minute
    pitch: int  # eSpeak 0-100


def make_speakers(cfg: SynthConfig) -> dict[str, list[Speaker]]:
    """Speakers per part; accents cycle, variants are drawn without replacement."""
    if cfg.num_speakers > len(ACCENTS) * len(VARIANTS):
        raise ValueError(f"at most {len(ACCENTS) * len(VARIANTS)} speakers")
    if cfg.num_speakers - cfg.dev_speakers - cfg.test_speakers < 1:
        raise ValueError("no training speakers left")
    rng = np.random.default_rng([cfg.seed, 7919])
    variants = list(rng.permutation(VARIANTS))
    speakers = []
    for i in range(cfg.num_speakers):
        accent = ACCENTS[i % len(ACCENTS)]
        variant = variants[i % len(variants)]
        speakers.append(
            Speaker(f"spk{i:03d}", f"{accent}+{variant}", int(rng.integers(135, 196)), int(rng.integers(25, 76)))
        )
    n_train = cfg.num_speakers - cfg.dev_speakers - cfg.test_speakers
    return {
        "train": speakers[:n_train],
        "dev": speakers[n_train : n_train + cfg.dev_speakers],
        "test": speakers[n_train + cfg.dev_speakers :],
    }


@functools.lru_cache(maxsize=4)
def _resampler(source_rate: int, target_rate: int):
    return Resample(source_rate, target_rate)


def _coloured_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """White, pink (1/f power) or brown (1/f^2) Gaussian noise, unit variance."""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.arange(len(spectrum)), 1.0)
    spectrum /= np.sqrt(f) if kind == "pink" else f
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


@dataclass
class _Plan:
    """What an utterance will be before it is spoken: its generator, speaker and text."""

    part: str
    index: int
    speaker: Speaker
    rng: np.random.Generator
    text: str

    @property
    def id(self) -> str:
        return f"{self.speaker.id}-{self.part}-{self.index:05d}"

    def request(self) -> tuple[str, str, int, int, int]:
        espeak_seed = int(self.rng.integers(2**31))
        return (self.text.lower(), self.speaker.voice, self.speaker.rate, self.speaker.pitch, espeak_seed)


def plan_utterance(cfg: SynthConfig, part: str, index: int, speaker: Speaker) -> _Plan:
    rng = np.random.default_rng([cfg.seed, PARTS.index(part), index])
    return _Plan(part, index, speaker, rng, generate_sentence(rng))


def render_utterance(cfg: SynthConfig, plan: _Plan, syn: Synthesis):
    """(int16 samples at cfg.sampling_rate, metadata): resampling, silence, level, noise."""
    rng, text = plan.rng, plan.text
    if len(syn.words) != len(text.split()):
        raise RuntimeError(f"eSpeak gave {len(syn.words)} word events for '{text}'")

    speech = syn.samples.astype(np.float32) / 32768.0
    ratio = cfg.sampling_rate / syn.sampling_rate
    if syn.sampling_rate != cfg.sampling_rate:
        speech = _resampler(syn.sampling_rate, cfg.sampling_rate)(torch.from_numpy(speech)[None])[0].numpy()
    lead = int(rng.uniform(0.1, 0.5) * cfg.sampling_rate)
    trail = int(rng.uniform(0.1, 0.5) * cfg.sampling_rate)
    gain_db = rng.uniform(-20.0, -3.0)  # peak level
    speech = speech * (10 ** (gain_db / 20) / (np.abs(speech).max() + 1e-9))
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    signal += 10 ** (-70 / 20) * rng.standard_normal(len(signal))  # a recording's noise floor, not digital zero

    meta = {"noise": None, "snr_db": None}
    if rng.uniform() < cfg.noise_prob:
        kind = ["white", "pink", "brown"][rng.integers(3)]
        snr = float(rng.uniform(*cfg.snr_db))
        noise = _coloured_noise(rng, len(signal), kind)
        speech_power = np.mean(speech[np.abs(speech) > 1e-3] ** 2)
        signal += noise * np.sqrt(speech_power / 10 ** (snr / 10))
        meta = {"noise": kind, "snr_db": round(snr, 2)}
    peak = np.abs(signal).max()
    if peak > 0.99:
        signal *= 0.99 / peak
    samples = np.round(signal * 32767).astype(np.int16)

    to_seconds = lambda s: (lead + s * ratio) / cfg.sampling_rate  # noqa: E731
    alignment = {
        tier: [[sym, round(to_seconds(b), 4), round(to_seconds(e) - to_seconds(b), 4)] for sym, b, e in items]
        for tier, items in (("word", [(w.upper(), b, e) for w, b, e in syn.words]), ("phone", syn.phones))
    }
    return samples, {"text": text, "alignment": alignment, **meta}


def _generate_part(
    cfg: SynthConfig,
    part: str,
    speakers: list[Speaker],
    target_seconds: float,
    out_dir: Path,
    synthesizer: FreshSynthesizer,
    block: int = 32,
) -> list[dict]:
    """Utterances of one part until ``target_seconds`` of audio (or the utterance cap)."""
    entries, total, index = [], 0.0, 0
    limit = cfg.max_utterances_per_part or None
    bar = tqdm(total=round(target_seconds), desc=f"synth {part}", unit="s", leave=False)
    while total < target_seconds and (limit is None or index < limit):
        # Spoken in fixed blocks: eSpeak's output depends on the calls before it.
        size = block if limit is None else min(block, limit - index)
        plans = [plan_utterance(cfg, part, i, speakers[i % len(speakers)]) for i in range(index, index + size)]
        for plan, syn in zip(plans, synthesizer.synthesize_batch([p.request() for p in plans])):
            if total >= target_seconds or (limit is not None and index >= limit):
                break
            samples, meta = render_utterance(cfg, plan, syn)
            rel = Path("wav") / plan.speaker.id / f"{plan.id}.wav"
            if not (out_dir / rel).exists():  # present = complete (renamed into place); a resumed run skips it
                with atomic_output(out_dir / rel) as tmp:
                    sf.write(tmp, samples, cfg.sampling_rate, subtype="PCM_16", format="WAV")
            duration = len(samples) / cfg.sampling_rate
            spk = plan.speaker
            entries.append(
                {
                    "id": plan.id,
                    "part": part,
                    "speaker": spk.id,
                    "voice": spk.voice,
                    "rate": spk.rate,
                    "pitch": spk.pitch,
                    "audio": str(rel),
                    "duration": round(duration, 4),
                    **meta,
                }
            )
            total += duration
            index += 1
            bar.update(round(duration))
    bar.close()
    log.info("synth %s: %d utterances, %.1f min, %d speakers", part, index, total / 60, len(speakers))
    return entries


def generate_corpus(
    out_dir: Path | str,
    cfg: SynthConfig = SynthConfig(),
    resume_key: str | None = None,
    engine: JobsConfig | None = None,
) -> Path:
    """Write the corpus into ``out_dir``. WAVs of a killed run are kept when it ran under ``resume_key``
    (the verb's options; None: start over). The generation is one job on ``engine`` (asrhybrid.jobs: a Dask
    worker or a Slurm node may run it, and a lost one is retried, resuming from the WAVs it wrote), not
    several: eSpeak's audio for an utterance depends on the calls made before it in the same process (a
    second block of 32 utterances synthesised in a fresh process changed 31 of its 32 waveforms), so a
    corpus split over processes would be another corpus."""
    out_dir = Path(out_dir)
    run_jobs(
        [Job("synth", _generate, {"out_dir": out_dir, "cfg": cfg, "resume_key": resume_key})],
        engine or JobsConfig(workers=1),
        out_dir / "log",
        desc="synth",
    )
    return out_dir


def _generate(out_dir: Path, cfg: SynthConfig, resume_key: str | None) -> None:
    resume_or_clear(out_dir / "wav", resume_key)
    for folder in (out_dir / "wav").glob("*"):
        remove_stale_temporaries(folder)
    speakers = make_speakers(cfg)
    targets = {"train": cfg.train_hours * 3600, "dev": cfg.dev_minutes * 60, "test": cfg.test_minutes * 60}
    entries = []
    with FreshSynthesizer() as synthesizer:
        for part in PARTS:
            entries += _generate_part(cfg, part, speakers[part], targets[part], out_dir, synthesizer)
    write_text_atomic(out_dir / "metadata.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    write_text_atomic(
        out_dir / "speakers.json", json.dumps({p: [asdict(s) for s in v] for p, v in speakers.items()}, indent=1)
    )
