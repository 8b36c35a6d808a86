"""CTM and TextGrid conventions for alignments of segments of longer recordings (Kaldi's `segments`)."""

from __future__ import annotations

import pytest
from lhotse import MonoCut, Recording
from lhotse.audio import AudioSource

from asrhybrid.align.generation import ctm_line, cut_entries, read_ctm, write_textgrid
from asrhybrid.errors import DataError


def segment(rec: Recording, utt: str, start: float, duration: float, channel: int = 0) -> MonoCut:
    return MonoCut(id=utt, start=start, duration=duration, channel=channel, recording=rec)


@pytest.fixture
def recording():
    return Recording(
        id="meeting1",
        sources=[AudioSource(type="file", channels=[0, 1], source="/dev/null")],
        sampling_rate=16000,
        num_samples=16000 * 10,
        duration=10.0,
    )


def test_ctm_names_the_recording_adds_the_segment_offset_and_reads_back_per_cut(tmp_path, recording):
    first, second = segment(recording, "utt-a", 1.5, 2.0), segment(recording, "utt-b", 4.0, 3.0, channel=1)
    lines = [
        ctm_line(first, 0.10, 0.50, "HELLO"),
        ctm_line(first, 0.50, 1.20, "WORLD"),
        ctm_line(second, 0.0, 0.8, "AGAIN"),
    ]
    assert lines[0] == "meeting1 1 1.60 0.40 HELLO\n"  # recording id, channel 1, start in the recording
    assert lines[2] == "meeting1 2 4.00 0.80 AGAIN\n"  # the second channel is Kaldi's channel 2
    (tmp_path / "word.ctm").write_text("".join(lines))
    ctm = read_ctm(tmp_path / "word.ctm")
    assert [w for *_, w in cut_entries(ctm, first)] == ["HELLO", "WORLD"]
    assert cut_entries(ctm, second) == [pytest.approx((0.0, 0.8, "AGAIN"))]
    assert cut_entries(ctm, first)[0] == pytest.approx((0.1, 0.5, "HELLO"))


def test_a_short_ctm_line_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "bad.ctm").write_text("rec 1 0.00 0.10 A\nrec 1 0.10\n")
    with pytest.raises(DataError, match="bad.ctm:2"):
        read_ctm(tmp_path / "bad.ctm")


def test_textgrids_are_praat_files_praatio_reads(tmp_path):
    from praatio import textgrid

    write_textgrid(
        tmp_path / "meeting1.TextGrid",
        10.0,
        {"words": [(1.6, 2.0, "HELLO"), (4.0, 4.8, "AGAIN")], "phones": [(1.6, 1.8, "HH"), (1.8, 2.0, "AH0")]},
    )
    text = (tmp_path / "meeting1.TextGrid").read_text()
    assert text.startswith('File type = "ooTextFile"') and 'class = "IntervalTier"' in text
    grid = textgrid.openTextgrid(str(tmp_path / "meeting1.TextGrid"), includeEmptyIntervals=True)
    assert grid.tierNames == ("words", "phones") and grid.maxTimestamp == 10.0
    words = grid.getTier("words").entries
    assert [(e.start, e.end, e.label) for e in words] == [
        (0.0, 1.6, ""),
        (1.6, 2.0, "HELLO"),
        (2.0, 4.0, ""),
        (4.0, 4.8, "AGAIN"),
        (4.8, 10.0, ""),
    ]


def test_textgrid_of_a_duration_in_finer_units_than_milliseconds(tmp_path):
    from praatio import textgrid

    write_textgrid(tmp_path / "r.TextGrid", 2.38675, {"words": [(0.5, 2.38675, "END")]})
    grid = textgrid.openTextgrid(str(tmp_path / "r.TextGrid"), includeEmptyIntervals=True)
    assert grid.maxTimestamp == 2.387 and grid.getTier("words").entries[-1].end == 2.387
