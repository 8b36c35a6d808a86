"""Lhotse manifests from a list of utterances, with every input checked first.

Each corpus preparer (yesno, fsdd, synth, Kaldi data dirs) turns its own
layout into ``Utterance`` records; this module checks them all (missing or
corrupt audio, zero length, channel count, sample rate, empty or duplicate
entries) and only then builds Lhotse ``RecordingSet`` / ``SupervisionSet``.
Problems are collected and reported together, each naming the utterance and
the file, and nothing is written when there is any.
"""

from __future__ import annotations

import io
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import soundfile as sf
from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest_lazy
from lhotse.supervision import AlignmentItem
from tqdm import tqdm

from asrhybrid.errors import DataError
from asrhybrid.outputs import atomic_output

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    """One utterance as a corpus describes it, before any checking.

    ``audio`` is a file path or, as in a Kaldi ``wav.scp``, a shell command
    ending in ``|`` that writes a WAV file to stdout. ``recording_id`` defaults
    to ``id`` (one utterance per file); with Kaldi ``segments`` several
    utterances share a recording and give ``start``/``end`` in seconds.
    """

    id: str
    speaker: str
    text: str
    audio: str
    recording_id: str | None = None
    start: float | None = None
    end: float | None = None
    origin: str = ""  # where the entry came from (file:line), for messages
    custom: dict[str, Any] = field(default_factory=dict)
    alignment: dict[str, list[AlignmentItem]] | None = None


@dataclass
class _AudioInfo:
    sampling_rate: int
    num_samples: int
    channels: int


MIN_DURATION = 0.025  # one 25 ms fbank window: anything shorter has no frame to align or recognise


def _where(utt: Utterance) -> str:
    return f"utterance '{utt.id}'" + (f" ({utt.origin})" if utt.origin else "")


def _read_command_audio(command: str) -> bytes:
    result = subprocess.run(command, shell=True, capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"command exited {result.returncode}: {result.stderr.decode(errors='replace').strip()[:200]}"
        )
    return result.stdout


def wav_data_shortfall(path: Path) -> int:
    """Bytes missing from a RIFF/WAVE file's data chunk (0 if complete or not a WAV).

    libsndfile quietly shortens a truncated file to what is there, and Kaldi's
    reader only warns; we call it corrupt. Sizes 0 and 0xFFFFFFFF mean "unknown
    length" (streamed WAV) and are accepted, as Kaldi does.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            chunk_size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return 0
                return max(0, pos + 8 + chunk_size - size)
            pos += 8 + chunk_size + (chunk_size & 1)
    return 0


def probe_audio(audio: str, verify: bool) -> _AudioInfo:
    """Read an audio header (and with ``verify`` the whole signal).

    Raises FileNotFoundError or RuntimeError with a short reason.
    """
    if audio.endswith("|"):
        data = _read_command_audio(audio[:-1])
        samples, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
        return _AudioInfo(sr, samples.shape[0], samples.shape[1])
    path = Path(audio)
    if not path.is_file():
        raise FileNotFoundError("file does not exist")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt headers
        raise RuntimeError(f"not a readable audio file ({e})") from None
    if info.format == "WAV":
        missing = wav_data_shortfall(path)
        if missing:
            raise RuntimeError(f"truncated WAV: the data chunk is {missing} bytes short of its header's size")
    if verify and info.frames > 0:
        try:
            samples, _ = sf.read(str(path), dtype="int16", always_2d=True)
        except Exception as e:
            raise RuntimeError(f"audio data cannot be decoded ({e})") from None
        if samples.shape[0] != info.frames:
            raise RuntimeError(f"truncated: header says {info.frames} samples, file holds {samples.shape[0]}")
    return _AudioInfo(info.samplerate, info.frames, info.channels)


def _check_utterances(utterances: list[Utterance]) -> list[str]:
    """The problems of the utterances' ids, transcripts and speakers."""
    problems: list[str] = []
    seen: dict[str, Utterance] = {}
    for utt in utterances:
        if utt.id in seen:
            problems.append(
                f"duplicate utterance id '{utt.id}' ({seen[utt.id].origin or seen[utt.id].audio} and {utt.origin or utt.audio})"
            )
        else:
            seen[utt.id] = utt
        if not utt.id or any(c.isspace() for c in utt.id):
            problems.append(f"{_where(utt)}: utterance ids must be non-empty and have no whitespace")
        if not utt.text.strip():
            problems.append(f"{_where(utt)}: empty transcript (audio {utt.audio})")
        if not utt.speaker:
            problems.append(f"{_where(utt)}: no speaker")
    return problems


def _probe_recordings(
    utterances: list[Utterance], sample_rate: int, resample: bool, verify_audio: bool, context: str, problems: list[str]
) -> dict[str, _AudioInfo]:
    """Each usable recording's audio facts, by recording id; what is wrong with the others goes to ``problems``."""
    # One probe per distinct audio source (segments share a recording).
    infos: dict[str, _AudioInfo] = {}
    rec_audio: dict[str, str] = {}
    for utt in tqdm(utterances, desc=f"check audio {context}".strip(), unit="utt", leave=False, mininterval=1.0):
        rec_id = utt.recording_id or utt.id
        if rec_id in rec_audio:
            if rec_audio[rec_id] != utt.audio:
                problems.append(f"{_where(utt)}: recording '{rec_id}' is given two audio sources")
            continue
        rec_audio[rec_id] = utt.audio
        try:
            info = probe_audio(utt.audio, verify_audio)
        except FileNotFoundError as e:
            problems.append(f"{_where(utt)}: missing audio file {utt.audio}: {e}")
            continue
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            problems.append(f"{_where(utt)}: unreadable audio {utt.audio}: {e}")
            continue
        if info.num_samples == 0:
            problems.append(f"{_where(utt)}: zero-length audio {utt.audio}")
            continue
        if info.channels != 1:
            problems.append(
                f"{_where(utt)}: {utt.audio} has {info.channels} channels; recipes take mono audio "
                "(select a channel in wav.scp, e.g. 'sox FILE -t wav - remix 1 |')"
            )
            continue
        if info.sampling_rate != sample_rate and not resample:
            problems.append(
                f"{_where(utt)}: {utt.audio} is at {info.sampling_rate} Hz, the recipe expects {sample_rate} Hz "
                "(set 'resample: true' in the recipe's data options to resample on load)"
            )
            continue
        infos[rec_id] = info
    return infos


def _recordings_and_supervisions(
    utterances: list[Utterance], infos: dict[str, _AudioInfo], sample_rate: int, problems: list[str]
) -> tuple[dict[str, Recording], list[SupervisionSegment], dict[int, int]]:
    """Lhotse's recordings (resampled where their rate is not ``sample_rate``) and one supervision per utterance
    whose segment lies inside its recording; and how many recordings each other rate had."""
    recordings: dict[str, Recording] = {}
    supervisions: list[SupervisionSegment] = []
    rates: dict[int, int] = {}
    for utt in utterances:
        rec_id = utt.recording_id or utt.id
        info = infos.get(rec_id)
        if info is None:
            continue
        if rec_id not in recordings:
            source_type = "command" if utt.audio.endswith("|") else "file"
            source = utt.audio[:-1].strip() if source_type == "command" else str(Path(utt.audio).resolve())
            rec = Recording(
                id=rec_id,
                sources=[AudioSource(type=source_type, channels=[0], source=source)],
                sampling_rate=info.sampling_rate,
                num_samples=info.num_samples,
                duration=info.num_samples / info.sampling_rate,
            )
            if info.sampling_rate != sample_rate:
                rates[info.sampling_rate] = rates.get(info.sampling_rate, 0) + 1
                rec = rec.resample(sample_rate)
            recordings[rec_id] = rec
        rec = recordings[rec_id]
        start = utt.start if utt.start is not None else 0.0
        end = utt.end if utt.end is not None else rec.duration
        if start < 0 or end <= start or end > rec.duration + 0.01:
            problems.append(
                f"{_where(utt)}: segment {start:.3f}-{end:.3f} s is empty or outside recording "
                f"'{rec_id}' ({rec.duration:.3f} s)"
            )
            continue
        if min(end, rec.duration) - start < MIN_DURATION:
            problems.append(
                f"{_where(utt)}: {min(end, rec.duration) - start:.4f} s of audio, shorter than one "
                f"feature frame ({MIN_DURATION} s)"
            )
            continue
        supervisions.append(
            SupervisionSegment(
                id=utt.id,
                recording_id=rec_id,
                start=start,
                duration=round(min(end, rec.duration) - start, 6),
                channel=0,
                text=" ".join(utt.text.split()),
                speaker=utt.speaker,
                language="English",
                custom=utt.custom or None,
                alignment=utt.alignment,
            )
        )
    return recordings, supervisions, rates


def build_manifests(
    utterances: Iterable[Utterance],
    sample_rate: int,
    resample: bool = True,
    verify_audio: bool = True,
    context: str = "",
) -> tuple[RecordingSet, SupervisionSet]:
    """Check every utterance and build (recordings, supervisions).

    Recordings at another rate than ``sample_rate`` are resampled on load
    (Lhotse ``Recording.resample``) when ``resample`` is set, else reported.
    Raises DataError listing every problem found.
    """
    utterances = list(utterances)
    problems = _check_utterances(utterances)
    infos = _probe_recordings(utterances, sample_rate, resample, verify_audio, context, problems)
    recordings, supervisions, rates = _recordings_and_supervisions(utterances, infos, sample_rate, problems)
    if problems:
        raise DataError(problems, context)
    for rate, count in sorted(rates.items()):
        log.warning(
            "%s%d recording(s) at %d Hz will be resampled to %d Hz on load",
            f"{context}: " if context else "",
            count,
            rate,
            sample_rate,
        )
    return RecordingSet.from_recordings(recordings.values()), SupervisionSet.from_segments(supervisions)


def manifest_paths(manifest_dir: Path, corpus: str, part: str) -> tuple[Path, Path]:
    """icefall's names: ``<corpus>_recordings_<part>.jsonl.gz``, ``<corpus>_supervisions_<part>.jsonl.gz``."""
    return (
        manifest_dir / f"{corpus}_recordings_{part}.jsonl.gz",
        manifest_dir / f"{corpus}_supervisions_{part}.jsonl.gz",
    )


def write_manifests(
    manifest_dir: Path, corpus: str, part: str, recordings: RecordingSet, supervisions: SupervisionSet
) -> None:
    rec_path, sup_path = manifest_paths(manifest_dir, corpus, part)
    with atomic_output(rec_path) as tmp:
        recordings.to_file(tmp)
    with atomic_output(sup_path) as tmp:
        supervisions.to_file(tmp)


def load_cuts(path: Path | str):
    """A cuts manifest for a stage that reads it, lazily (read from disk as it is iterated, so a corpus of any
    size fits); a missing file or an empty set is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"{path} not found (asrhybrid compute-fbank writes the cuts with features)"])
    cuts = load_manifest_lazy(path)
    if cuts is None or next(iter(cuts), None) is None:  # (lhotse gives None for an empty manifest)
        raise DataError([f"{path}: no cuts"])
    return cuts


def transcript(cut, path: Path | str) -> str:
    """The one supervision's text of a cut; alignment and training need exactly one per cut."""
    if len(cut.supervisions) != 1:
        raise DataError(
            [
                f"cut '{cut.id}' ({path}) has {len(cut.supervisions)} supervisions; a stage that aligns "
                "or trains needs exactly one per cut (Lhotse's CutSet.trim_to_supervisions makes them)"
            ]
        )
    return cut.supervisions[0].text or ""


def frame_blocks(cuts, max_frames: int):
    """Consecutive groups of ``cuts`` holding about ``max_frames`` feature frames each (the last may hold fewer):
    the unit in which the streaming stages read features, so memory follows the block, not the corpus."""
    block, frames = [], 0
    for cut in cuts:
        block.append(cut)
        frames += cut.num_frames
        if frames >= max_frames:
            yield block
            block, frames = [], 0
    if block:
        yield block
