"""RESULTS.md from scored decode dirs (asrhybrid.score.results): every scored dir a line, named searches too."""

from __future__ import annotations

import json
from pathlib import Path

from asrhybrid.score.results import _describe, results_markdown


def _scored(workdir: Path, system: str, name: str, wer: float, search: dict | None) -> str:
    d = workdir / "exp" / system / name
    d.mkdir(parents=True)
    line = f"%WER {wer:.2f} [ 1 / 10, 0 ins, 0 del, 1 sub ] {d}/wer"
    (d / "scoring.json").write_text(
        json.dumps(
            {
                "lmwt": None if search else 10,
                "wip": None if search else 0.0,
                "search": search,
                "wer": wer,
                "wer_line": line,
                "utterances": 3,
            }
        )
    )
    return line.replace(str(workdir) + "/", "")


def test_part_lm_and_method_or_search_name_are_read_from_the_dir_name():
    assert _describe(Path("decode_test_small")) == ("test", "small", "1st pass")
    assert _describe(Path("decode_dev_large_lattice")) == ("dev", "large", "lattice")
    assert _describe(Path("decode_test_nolm_beam")) == ("test", "nolm", "beam")
    assert _describe(Path("decode_test_nolm_ctc05")) == ("test", "nolm", "ctc05")  # a named search
    assert _describe(Path("decode_dev_clean_2_large_beam")) == ("dev_clean_2", "large", "beam")
    assert _describe(Path("decode_test_small_nolm_joint")) == ("test_small", "nolm", "joint")  # the last lm decides


def test_every_scored_dir_has_its_line_named_searches_with_their_settings(tmp_path):
    lines = [
        _scored(tmp_path, "las", "decode_test_nolm_beam", 11.67, {"method": "beam", "beam": 16, "ctc_weight": None}),
        _scored(tmp_path, "las", "decode_test_nolm_ctc05", 0.42, {"method": "beam", "beam": 16, "ctc_weight": 0.5}),
        _scored(
            tmp_path,
            "las",
            "decode_test_large_beam",
            15.0,
            {"method": "beam", "beam": 16, "lm": "G", "alpha": 0.5, "beta": 1.0, "lm_fusion": "shallow"},
        ),
        _scored(
            tmp_path,
            "rnnt",
            "decode_test_large_bp15",
            23.14,
            {"method": "beam", "beam": 8, "lm": "G", "alpha": 0.3, "beta": 2.0, "blank_penalty": 1.5},
        ),
        _scored(tmp_path, "lstmp", "decode_test_small", 2.5, None),
    ]
    text = results_markdown(tmp_path, "toy")
    for line in lines:
        assert line in text
    assert "| las | nolm | ctc05 | 0.42 | beam 16, CTC weight 0.5 |" in text
    assert "| las | large | beam | 15.00 | beam 16, LM weight 0.5 in the search, word bonus 1 |" in text
    assert "| rnnt | large | bp15 | 23.14 | beam 8, blank penalty 1.5, LM weight 0.3, word bonus 2 |" in text
    assert "| lstmp | small | 1st pass | 2.50 | best of the grid: LMWT 10, WIP 0 |" in text
