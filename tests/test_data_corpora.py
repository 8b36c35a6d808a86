"""Corpus preparers on the real corpora (skipped when ../shared is absent)."""

from __future__ import annotations

import pytest

from asrhybrid.data.corpora import prepare_fsdd, prepare_yesno
from asrhybrid.errors import ConfigError, DataError


def test_yesno_split_is_kaldis(yesno_dir):
    parts = prepare_yesno(yesno_dir)
    names = sorted(p.stem for p in yesno_dir.glob("*.wav"))
    assert [u.id for u in parts["train"]] == names[:30]
    assert [u.id for u in parts["test"]] == names[30:]
    assert parts["train"][0].text.split() == ["YES" if b == "1" else "NO" for b in names[0].split("_")]


def test_yesno_alternate_split_starts_both_parts_with_both_words(yesno_dir):
    parts = prepare_yesno(yesno_dir, split="alternate")
    names = sorted(p.stem for p in yesno_dir.glob("*.wav"))
    assert [u.id for u in parts["train"]] == names[0::2] and [u.id for u in parts["test"]] == names[1::2]
    for utts in parts.values():
        assert {u.text.split()[0] for u in utts} == {"YES", "NO"}
    sorted_train = prepare_yesno(yesno_dir)["train"]
    assert {u.text.split()[0] for u in sorted_train} == {"NO"}  # what the alternate split is for
    with pytest.raises(ConfigError, match="split"):
        prepare_yesno(yesno_dir, split="random")


def test_yesno_accepts_the_archive_layout(yesno_dir):
    assert len(prepare_yesno(yesno_dir.parent)["test"]) == 30  # corpus_dir/waves_yesno/*.wav


def test_fsdd_speaker_split_holds_out_speakers(fsdd_dir):
    parts = prepare_fsdd(fsdd_dir, dev_speakers=["theo"], test_speakers=["yweweler"])
    speakers = {p: {u.speaker for u in utts} for p, utts in parts.items()}
    assert speakers == {"train": {"jackson", "nicolas"}, "dev": {"theo"}, "test": {"yweweler"}}
    assert len(parts["train"]) == 1000 and len(parts["dev"]) == 500 == len(parts["test"])
    utt = parts["dev"][0]
    assert utt.id == "theo_0_00" and utt.text == "ZERO"


def test_fsdd_dev_takes_hold_out_takes_of_the_training_speakers(fsdd_dir):
    parts = prepare_fsdd(fsdd_dir, dev_speakers=[], dev_takes=5, test_speakers=["yweweler"])
    speakers = {p: {u.speaker for u in utts} for p, utts in parts.items()}
    assert speakers == {
        "train": {"jackson", "nicolas", "theo"},
        "dev": {"jackson", "nicolas", "theo"},
        "test": {"yweweler"},
    }
    assert len(parts["dev"]) == 150 and len(parts["train"]) == 1350 and len(parts["test"]) == 500
    assert not {u.id for u in parts["dev"]} & {u.id for u in parts["train"]}
    assert all(int(u.id.rsplit("_", 1)[1]) < 5 for u in parts["dev"])
    with pytest.raises(ConfigError, match="dev_takes"):
        prepare_fsdd(fsdd_dir, dev_speakers=["theo"], dev_takes=5, test_speakers=["yweweler"])


def test_fsdd_upstream_split(fsdd_dir):
    parts = prepare_fsdd(fsdd_dir, split="upstream")
    assert len(parts["test"]) == 200 and len(parts["train"]) == 1800
    assert all(int(u.id.rsplit("_", 1)[1]) < 5 for u in parts["test"])


def test_fsdd_overlapping_split_is_refused(fsdd_dir):
    with pytest.raises(ConfigError, match="two parts"):
        prepare_fsdd(fsdd_dir, train_speakers=["theo", "jackson"], dev_speakers=["theo"], test_speakers=["nicolas"])


def test_badly_named_yesno_file(tmp_path, yesno_dir):
    import shutil

    for p in sorted(yesno_dir.glob("*.wav"))[:3]:
        shutil.copy(p, tmp_path / p.name)
    shutil.copy(p, tmp_path / "1_2_3.wav")
    with pytest.raises(DataError, match="1_2_3.wav"):
        prepare_yesno(tmp_path, num_train=2)
