"""prepare_lang against Kaldi's own output for yesno (../shared/testdata/kaldi_formats/yesno_tutorial)."""

from __future__ import annotations

import pytest
from conftest import require_shared

from asrhybrid.errors import DataError
from asrhybrid.lang.lexicon import Lexicon, corpus_dict_dir, write_dict_dir
from asrhybrid.lang.prepare_lang import add_lex_disambig, position_dependent, prepare_lang


@pytest.fixture
def yesno_tutorial():
    return require_shared("testdata", "kaldi_formats", "yesno_tutorial")


def test_yesno_lang_equals_kaldis(tmp_path, yesno_tutorial):
    ours = prepare_lang(yesno_tutorial / "dict", tmp_path / "lang", "<SIL>", position_dependent_phones=False)
    reference = yesno_tutorial / "data" / "lang"
    compared = 0
    for ref in sorted(p for p in reference.rglob("*") if p.is_file()):
        mine = ours / ref.relative_to(reference)
        assert mine.is_file(), f"missing {mine.name}"
        # every file byte for byte, the binary FSTs too (weights as float32: log 2 is 0x3f317218 in both)
        assert mine.read_bytes() == ref.read_bytes(), ref.name
        compared += 1
    assert compared >= 30


def test_add_lex_disambig_marks_homophones_and_prefixes():
    prons = [["R", "EH", "D"], ["R", "EH", "D"], ["R", "EH"], ["B", "L", "UW"]]
    out, top = add_lex_disambig(prons)
    assert out == [["R", "EH", "D", "#1"], ["R", "EH", "D", "#2"], ["R", "EH", "#1"], ["B", "L", "UW"]]
    assert top == 2


def test_position_dependent_phones():
    assert position_dependent(["K", "AE", "T"]) == ["K_B", "AE_I", "T_E"]
    assert position_dependent(["AH"]) == ["AH_S"]


def test_position_dependent_lang_from_cmudict(tmp_path):
    missing = corpus_dict_dir(tmp_path / "dict", {"READ", "RED", "REDDER", "CAT", "QWZXV"})
    assert missing == ["QWZXV"]
    lang = prepare_lang(tmp_path / "dict", tmp_path / "lang", "<UNK>")
    phones = (lang / "phones.txt").read_text().split("\n")
    assert phones[:6] == ["<eps> 0", "SIL 1", "SIL_B 2", "SIL_E 3", "SIL_I 4", "SIL_S 5"]
    words = [line.split()[0] for line in (lang / "words.txt").read_text().splitlines()]
    assert words[-3:] == ["#0", "<s>", "</s>"] and "RED" in words and "QWZXV" not in words
    # READ (R EH1 D) and RED (R EH1 D) are homophones: L_disambig needs #1, #2, then #3 for silence.
    assert (lang / "phones" / "disambig.txt").read_text().split() == ["#0", "#1", "#2", "#3"]
    boundary = dict(line.split() for line in (lang / "phones" / "word_boundary.txt").read_text().splitlines())
    assert boundary["K_B"] == "begin" and boundary["AE1_I"] == "internal" and boundary["SIL"] == "nonword"
    assert (lang / "phones" / "nonsilence.txt").read_text().split()[:4] == ["AE1_B", "AE1_E", "AE1_I", "AE1_S"]


def test_unknown_phone_in_lexicon_names_the_line(tmp_path):
    write_dict_dir(tmp_path / "d", Lexicon([("YES", ["Y"]), ("NO", ["N"]), ("<SIL>", ["SIL"])]), ["SIL"], "SIL")
    (tmp_path / "d" / "lexicon.txt").write_text("YES Y\nNO N\nMAYBE M EY\n<SIL> SIL\n")
    with pytest.raises(DataError, match=r"lexicon.txt:3: word 'MAYBE' uses phone\(s\) M EY"):
        prepare_lang(tmp_path / "d", tmp_path / "lang", "<SIL>")
    assert not (tmp_path / "lang").exists()


def test_empty_lexicon(tmp_path):
    write_dict_dir(tmp_path / "d", Lexicon([("YES", ["Y"])]), ["SIL"], "SIL")
    (tmp_path / "d" / "lexicon.txt").write_text("")
    with pytest.raises(DataError, match="lexicon is empty"):
        prepare_lang(tmp_path / "d", tmp_path / "lang", "<SIL>")
