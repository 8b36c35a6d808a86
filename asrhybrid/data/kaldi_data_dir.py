"""Read a Kaldi data directory (wav.scp, text, utt2spk, optional segments).

Lhotse has ``load_kaldi_data_dir``, but it stops at the first bad line with a
bare exception; a user bringing their own Kaldi data needs every bad line named
with its file and line number, so the four table files are parsed here (they
are one-key-per-line text tables) and the audio checks are shared with every
other corpus in ``asrhybrid.data.manifests``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from asrhybrid.data.manifests import Utterance
from asrhybrid.errors import DataError

log = logging.getLogger(__name__)


def read_table(path: Path, min_fields: int, problems: list[str]) -> dict[str, tuple[list[str], int]]:
    """Map key -> (rest of the fields, line number); report bad lines into ``problems``."""
    table: dict[str, tuple[list[str], int]] = {}
    raw = path.read_bytes()
    for lineno, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            key = line_bytes.split(maxsplit=1)[0].decode("utf-8", errors="replace") if line_bytes.strip() else "?"
            problems.append(f"{path}:{lineno}: not valid UTF-8 (utterance '{key}', byte {e.start})")
            continue
        fields = line.split()
        if not fields:
            continue
        key, rest = fields[0], fields[1:]
        if len(rest) < min_fields:
            if path.name == "text":
                rest = []  # an empty transcript is reported with its utterance later
            else:
                problems.append(f"{path}:{lineno}: expected at least {min_fields + 1} fields, got '{line.strip()}'")
                continue
        if key in table:
            problems.append(f"{path}:{lineno}: duplicate utterance id '{key}' (first on line {table[key][1]})")
            continue
        table[key] = (rest, lineno)
    return table


def read_kaldi_data_dir(data_dir: Path | str) -> list[Utterance]:
    """Utterances of one Kaldi data dir. Raises DataError naming every bad line."""
    data_dir = Path(data_dir)
    problems: list[str] = []
    for name in ("wav.scp", "text", "utt2spk"):
        if not (data_dir / name).is_file():
            problems.append(f"{data_dir}: missing {name}")
    if problems:
        raise DataError(problems, str(data_dir))

    wav_scp = read_table(data_dir / "wav.scp", 1, problems)
    text = read_table(data_dir / "text", 1, problems)
    utt2spk = read_table(data_dir / "utt2spk", 1, problems)
    segments = read_table(data_dir / "segments", 3, problems) if (data_dir / "segments").is_file() else None

    utterances: list[Utterance] = []
    for utt_id, (words, lineno) in text.items():
        origin = f"{data_dir / 'text'}:{lineno}"
        if utt_id not in utt2spk:
            problems.append(f"utterance '{utt_id}' ({origin}): not in utt2spk")
            continue
        start = end = None
        rec_id = utt_id
        if segments is not None:
            if utt_id not in segments:
                problems.append(f"utterance '{utt_id}' ({origin}): not in segments")
                continue
            seg, seg_line = segments[utt_id]
            rec_id = seg[0]
            try:
                start, end = float(seg[1]), float(seg[2])
            except ValueError:
                problems.append(f"{data_dir / 'segments'}:{seg_line}: bad start/end times '{seg[1]} {seg[2]}'")
                continue
            end = None if end < 0 else end  # Kaldi: end -1 means to the end of the recording
        if rec_id not in wav_scp:
            problems.append(f"utterance '{utt_id}' ({origin}): recording '{rec_id}' not in wav.scp")
            continue
        entry, wav_line = wav_scp[rec_id]
        if len(entry) == 1 and re.fullmatch(r".+\.ark:\d+", entry[0]):
            problems.append(
                f"{data_dir / 'wav.scp'}:{wav_line}: '{entry[0]}' points into a Kaldi archive; "
                "give a file, or a command ending in '|' (e.g. wav-copy ... - |)"
            )
            continue
        utterances.append(
            Utterance(
                id=utt_id,
                speaker=utt2spk[utt_id][0][0],
                text=" ".join(words),
                audio=" ".join(wav_scp[rec_id][0]),
                recording_id=rec_id if segments is not None else None,
                start=start,
                end=end,
                origin=origin,
            )
        )
    if problems:
        raise DataError(problems, str(data_dir))
    untranscribed = sorted(set(utt2spk) - set(text))
    if untranscribed:  # Kaldi's fix_data_dir.sh drops them too; say how many
        log.warning(
            "%s: %d utterance(s) of utt2spk have no line in text and are left out: %s",
            data_dir,
            len(untranscribed),
            " ".join(untranscribed[:10]) + (" ..." if len(untranscribed) > 10 else ""),
        )
    return utterances
