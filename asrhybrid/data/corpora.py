"""Corpus preparers: each turns a corpus directory into utterances per part.

A preparer takes the corpus directory and its options from the recipe config
and returns ``{part: [Utterance, ...]}``; ``asrhybrid.data.prepare`` checks and
writes them. Register new corpora in ``PREPARERS``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from lhotse.recipes import prepare_librispeech as lhotse_prepare
from lhotse.supervision import AlignmentItem

from asrhybrid.data.kaldi_data_dir import read_kaldi_data_dir
from asrhybrid.data.manifests import Utterance
from asrhybrid.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Parts = dict[str, list[Utterance]]


def _find_wavs(corpus_dir: Path, subdir: str) -> tuple[Path, list[Path]]:
    """WAV files in ``corpus_dir`` or in its ``subdir`` (the layout of the original archive)."""
    for d in (corpus_dir, corpus_dir / subdir):
        wavs = sorted(d.glob("*.wav"))
        if wavs:
            return d, wavs
    raise DataError([f"no .wav files in {corpus_dir} or {corpus_dir / subdir}"], "corpus_dir")


def prepare_yesno(corpus_dir: Path, num_train: int = 30, split: str = "sorted") -> Parts:
    """Kaldi's egs/yesno split: files sorted by name, the first ``num_train`` train, the rest test.

    The transcript is the file name: 1 = YES, 0 = NO (one speaker). Kaldi's
    split puts every file that starts with NO in train and all but one of those
    that start with YES in test. ``split: alternate`` takes every other file
    instead (``num_train`` is then ignored: 30/30), so both parts start with
    both words: it measures what the first word's bias costs a system.
    """
    if split not in ("sorted", "alternate"):
        raise ConfigError(f"data.options.split: {split!r}, expected 'sorted' or 'alternate'")
    wav_dir, wavs = _find_wavs(corpus_dir, "waves_yesno")
    problems = []
    utterances = []
    for wav in wavs:
        bits = wav.stem.split("_")
        if len(bits) != 8 or any(b not in "01" or len(b) != 1 for b in bits):
            problems.append(f"{wav}: yesno file names are 8 digits 0/1 joined by '_' (the transcript)")
            continue
        text = " ".join("YES" if b == "1" else "NO" for b in bits)
        utterances.append(Utterance(id=wav.stem, speaker="yesno", text=text, audio=str(wav), origin=str(wav)))
    if problems:
        raise DataError(problems, str(wav_dir))
    if split == "alternate":
        return {"train": utterances[0::2], "test": utterances[1::2]}
    if len(utterances) <= num_train:
        raise DataError([f"{wav_dir}: {len(utterances)} files, need more than num_train={num_train}"])
    return {"train": utterances[:num_train], "test": utterances[num_train:]}


DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)$")


def prepare_fsdd(
    corpus_dir: Path,
    split: str = "speaker",
    train_speakers: list[str] | None = None,
    dev_speakers: list[str] | None = None,
    test_speakers: list[str] | None = None,
    test_takes: int = 5,
    dev_takes: int = 0,
) -> Parts:
    """Free Spoken Digit Dataset: ``{digit}_{speaker}_{take}.wav``, one word each.

    ``split: speaker`` (default) is speaker-independent: dev and test speakers
    are never heard in training. ``split: upstream`` is the dataset's own split,
    takes 0..test_takes-1 test and the rest train, all speakers in both.
    With ``dev_speakers: []`` and ``dev_takes: K``, dev is takes 0..K-1 of the
    training speakers (held out of training), for corpora with too few speakers
    to spare one for dev; test stays speaker-independent.
    Utterance ids are ``{speaker}_{digit}_{take}`` (speaker first, as Kaldi wants).
    """
    wav_dir, wavs = _find_wavs(corpus_dir, "recordings")
    problems = []
    by_speaker: dict[str, list[tuple[int, Utterance]]] = {}
    for wav in wavs:
        m = _FSDD_NAME.match(wav.stem)
        if not m:
            problems.append(f"{wav}: FSDD file names are '{{digit}}_{{speaker}}_{{take}}.wav'")
            continue
        digit, speaker, take = int(m.group(1)), m.group(2), int(m.group(3))
        utt = Utterance(
            id=f"{speaker}_{digit}_{take:02d}", speaker=speaker, text=DIGITS[digit], audio=str(wav), origin=str(wav)
        )
        by_speaker.setdefault(speaker, []).append((take, utt))
    if problems:
        raise DataError(problems, str(wav_dir))
    for utts in by_speaker.values():
        utts.sort(key=lambda tu: tu[1].id)

    if split == "upstream":
        parts: Parts = {"train": [], "test": []}
        for spk in sorted(by_speaker):
            for take, utt in by_speaker[spk]:
                parts["test" if take < test_takes else "train"].append(utt)
        return parts
    if split != "speaker":
        raise ConfigError(f"fsdd: split must be 'speaker' or 'upstream', not '{split}'")

    speakers = sorted(by_speaker)
    dev_speakers = dev_speakers if dev_speakers is not None else speakers[-2:-1]
    test_speakers = test_speakers if test_speakers is not None else speakers[-1:]
    train_speakers = train_speakers or [s for s in speakers if s not in dev_speakers + test_speakers]
    for name, group in (("train", train_speakers), ("dev", dev_speakers), ("test", test_speakers)):
        unknown = [s for s in group if s not in by_speaker]
        if unknown:
            raise ConfigError(f"fsdd: {name}_speakers {unknown} not in {wav_dir} (speakers: {speakers})")
    overlap = (set(train_speakers) & set(dev_speakers + test_speakers)) | (set(dev_speakers) & set(test_speakers))
    if overlap:
        raise ConfigError(f"fsdd: speakers {sorted(overlap)} are in two parts; the split must be speaker-independent")
    parts = {
        name: [utt for spk in group for _, utt in by_speaker[spk]]
        for name, group in (("train", train_speakers), ("dev", dev_speakers), ("test", test_speakers))
    }
    if dev_takes > 0:
        if dev_speakers:
            raise ConfigError("fsdd: dev_takes holds out takes of the training speakers; it needs dev_speakers: []")
        kept = [(take, utt) for spk in train_speakers for take, utt in by_speaker[spk]]
        parts["dev"] = [utt for take, utt in kept if take < dev_takes]
        parts["train"] = [utt for take, utt in kept if take >= dev_takes]
    return parts


def prepare_synth(corpus_dir: Path) -> Parts:
    """The generated corpus (``asrhybrid synth-corpus``): ``metadata.jsonl`` lists every utterance.

    The synthesiser's word and phone start/end times become the supervisions'
    ``alignment`` (ground truth for alignment accuracy); SNR and voice go to ``custom``.
    """
    meta = corpus_dir / "metadata.jsonl"
    if not meta.is_file():
        raise DataError([f"{meta} not found: generate the corpus first (asrhybrid synth-corpus {corpus_dir})"])
    parts: Parts = {}
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        e = json.loads(line)
        alignment = {
            tier: [AlignmentItem(symbol=s, start=round(b, 4), duration=round(d, 4)) for s, b, d in items]
            for tier, items in e["alignment"].items()
        }
        parts.setdefault(e["part"], []).append(
            Utterance(
                id=e["id"],
                speaker=e["speaker"],
                text=e["text"],
                audio=str(corpus_dir / e["audio"]),
                origin=f"{meta}:{lineno}",
                custom={k: e[k] for k in ("voice", "rate", "pitch", "snr_db", "noise") if k in e},
                alignment=alignment,
            )
        )
    return parts


def prepare_kaldi(corpus_dir: Path, parts: list[str] | None = None) -> Parts:
    """Kaldi data dirs: ``corpus_dir/<part>/{wav.scp,text,utt2spk[,segments]}``, or one dir itself."""
    if (corpus_dir / "wav.scp").is_file():
        return {parts[0] if parts else corpus_dir.name: read_kaldi_data_dir(corpus_dir)}
    found = sorted(d.name for d in corpus_dir.iterdir() if (d / "wav.scp").is_file()) if corpus_dir.is_dir() else []
    parts = parts or found
    if not parts:
        raise DataError([f"{corpus_dir}: no Kaldi data dirs (folders with wav.scp) found"])
    missing = [p for p in parts if p not in found]
    if missing:
        raise DataError([f"{corpus_dir / p}: not a Kaldi data dir (no wav.scp)" for p in missing])
    return {p: read_kaldi_data_dir(corpus_dir / p) for p in parts}


def prepare_librispeech(corpus_dir: Path, parts: list[str] | str = "auto") -> Parts:
    """LibriSpeech or mini_librispeech already on disk, read through Lhotse's recipe."""
    manifests = lhotse_prepare(corpus_dir, dataset_parts=parts)
    if not manifests:
        raise DataError([f"{corpus_dir}: no LibriSpeech parts found"])
    out: Parts = {}
    for part, m in manifests.items():
        recs = m["recordings"]
        out[part] = [
            Utterance(
                id=s.id,
                speaker=s.speaker,
                text=s.text,
                audio=recs[s.recording_id].sources[0].source,
                origin=part,
            )
            for s in m["supervisions"]
        ]
    return out


PREPARERS: dict[str, Callable[..., Parts]] = {
    "yesno": prepare_yesno,
    "fsdd": prepare_fsdd,
    "synth": prepare_synth,
    "kaldi": prepare_kaldi,
    "librispeech": prepare_librispeech,
}


def prepare_corpus(preparer: str, corpus_dir: Path, options: dict[str, Any]) -> Parts:
    if preparer not in PREPARERS:
        raise ConfigError(f"unknown corpus preparer '{preparer}' (known: {', '.join(PREPARERS)})")
    if not corpus_dir.exists():
        raise DataError([f"corpus directory {corpus_dir} does not exist"])
    try:
        return PREPARERS[preparer](corpus_dir, **options)
    except TypeError as e:
        raise ConfigError(f"{preparer}: bad data options {options}: {e}") from None
