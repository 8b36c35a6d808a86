"""asrhybrid.score.wer against Kaldi's edit-distance tests, kaldialign's and sclite's own expected outputs."""

from __future__ import annotations

import json
import re

import pytest
from conftest import require_shared

from asrhybrid.score.wer import ErrorCounts, align_words, expand_alternations, read_trn, score


def cases(name: str) -> dict:
    return json.loads(require_shared("testdata", "wer", name).read_text())


def test_kaldi_edit_distance_cases():
    data = cases("kaldi_edit_distance_test_cases.json")
    for case in data["total_only_cases"]:
        _, counts = align_words([str(x) for x in case["a"]], [str(x) for x in case["b"]])
        assert counts.errors == case["total"], case
    for case in data["ref_hyp_cases"]:
        _, c = align_words([str(x) for x in case["ref"]], [str(x) for x in case["hyp"]])
        assert (c.errors, c.ins, c.dels, c.subs) == (case["total"], case["ins"], case["del"], case["sub"]), case
        assert c.dels - c.ins == len(case["ref"]) - len(case["hyp"])


def test_kaldialign_alignments_and_counts():
    data = cases("kaldialign_test_cases.json")
    for case in data["align_and_edit_distance"]:
        alignment, c = align_words(case["ref"], case["hyp"])
        assert [list(p) for p in alignment] == case["alignment"]
        expected = case["edit_distance"]
        assert (c.ins, c.dels, c.subs, c.errors, c.ref_words) == (
            expected["ins"],
            expected["del"],
            expected["sub"],
            expected["total"],
            expected["ref_len"],
        )
        assert c.wer == pytest.approx(100 * expected["err_rate"])
    for case in data["sclite_mode"]["cases"]:
        _, c = align_words(case["ref"], case["hyp"], sclite=True)
        assert (c.ins, c.dels, c.subs) == (
            case["edit_distance"]["ins"],
            case["edit_distance"]["del"],
            case["edit_distance"]["sub"],
        )
    assert ErrorCounts(0, 0, 0, 0).wer == 0.0 and ErrorCounts(0, 1, 0, 0).wer == float("inf")


def test_sclite_demo_and_kaldis_wer_line():
    """sclite's documented demo: 8 errors in 46 words; Kaldi's compute-wer prints it with two decimals."""
    refs = read_trn(require_shared("testdata", "wer", "sctk_demo.ref.txt"))
    hyps = {u: w.split() for u, w in read_trn(require_shared("testdata", "wer", "sctk_demo.hyp.txt")).items()}
    total, per_utt = score(refs, hyps, sclite=True)
    assert [(s.counts.correct, s.counts.subs, s.counts.dels, s.counts.ins) for s in per_utt] == [
        (25, 0, 0, 0),
        (14, 7, 0, 1),
    ]
    assert total.wer_line() == "%WER 17.39 [ 8 / 46, 1 ins, 0 del, 7 sub ]"
    assert total.ser_line() == "%SER 50.00 [ 1 / 2 ]"


def test_sclite_test1_totals_and_speakers():
    """sclite's base test1 (51 WSJ utterances, alternations, mixed case): the counts of its .sys/.raw output."""
    refs = read_trn(require_shared("testdata", "wer", "sctk_csrnab.ref"))
    hyps = {u: w.split() for u, w in read_trn(require_shared("testdata", "wer", "sctk_csrnab.hyp")).items()}
    total, per_utt = score(refs, hyps, sclite=True)
    assert (total.sentences, total.ref_words, total.correct, total.subs, total.dels, total.ins) == (
        51,
        1406,
        1263,
        131,
        12,
        26,
    )
    assert total.sentence_errors == 38 and f"{total.wer:.1f}" == "12.0"
    speakers = {}
    for s in per_utt:  # -i wsj: the speaker is the first 3 characters of the id
        speakers[s.utt[:3].lower()] = speakers.get(s.utt[:3].lower(), ErrorCounts()) + s.counts
    table = {
        k: (v.sentences, v.ref_words, v.correct, v.subs, v.dels, v.ins, v.errors, v.sentence_errors)
        for k, v in speakers.items()
    }
    assert table == {
        "4t0": (15, 458, 385, 64, 9, 12, 85, 13),
        "4t1": (21, 544, 509, 32, 3, 4, 39, 12),
        "4t2": (15, 404, 369, 35, 0, 10, 45, 13),
    }
    raw = require_shared("testdata", "wer", "sctk_base_test1.pra").read_text()
    expected = {
        m.group(1).upper(): tuple(map(int, m.group(2).split()))
        for m in re.finditer(r"id: \((\S+)\)\nScores: \(#C #S #D #I\) ([\d ]+)", raw)
    }
    ours = {s.utt: (s.counts.correct, s.counts.subs, s.counts.dels, s.counts.ins) for s in per_utt}
    assert ours == expected


def test_alternations_and_missing_hypotheses():
    assert expand_alternations("A { B / @ } C") == [["A", "B", "C"], ["A", "C"]]
    total, per_utt = score({"u1": "A { B / @ } C", "u2": "X Y"}, {"u1": ["A", "C"]})
    assert (per_utt[0].counts.errors, per_utt[1].counts.dels) == (0, 2)
    assert total.wer_line("exp/x").endswith("[PARTIAL] exp/x")
    with pytest.raises(ValueError, match="no reference"):
        score({"u1": "A"}, {"u1": ["A"], "u9": ["B"]})
