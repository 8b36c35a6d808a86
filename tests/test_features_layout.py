"""The fbank dir's layout (asrhybrid.features.layout): what stage 1 writes is where a FeatureSet says, and the
fbank options travel with the features."""

from __future__ import annotations

import pytest
from test_data_bad_input import make_kaldi_dir, write_wav

from asrhybrid.errors import DataError
from asrhybrid.features.layout import FeatureSet, fbank_config
from asrhybrid.verbs import run_verb


def test_stage_one_writes_what_the_feature_set_names(tmp_path):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    utts = [(f"s-{i}", "s", f"WORD {i}", write_wav(wavs / f"{i}.wav", seconds=0.5, seed=i)) for i in range(3)]
    corpus = make_kaldi_dir(tmp_path / "corpus", utts)
    run_verb(
        [
            "prepare-data",
            str(corpus),
            str(tmp_path / "m"),
            "--corpus",
            "t",
            "--preparer",
            "kaldi",
            "--sample-rate",
            "16000",
        ]
    )
    fbank = tmp_path / "f"
    run_verb(["compute-fbank", str(tmp_path / "m"), str(fbank), "--corpus", "t", "--opt", "num_mel_bins=40"])

    features = FeatureSet(fbank, "t", "train")
    written = {p.name for p in fbank.iterdir() if not p.name.startswith(".")}
    assert written == set(features.outputs())
    assert (fbank / f".done.{features.marker_name}.json").is_file()
    assert FeatureSet.of_cuts(features.cuts) == features == FeatureSet.in_dir(fbank, "train")
    assert features.fbank_config().num_mel_bins == 40 == fbank_config(fbank).num_mel_bins


def test_names_that_are_not_stage_ones_are_told(tmp_path):
    assert FeatureSet.find(tmp_path / "my_cuts.jsonl.gz") is None
    assert FeatureSet.find(tmp_path / "a_b_cuts_dev_clean.jsonl.gz") == FeatureSet(tmp_path, "a_b", "dev_clean")
    with pytest.raises(DataError, match="my_cuts.jsonl.gz: not a cuts manifest of stage 1"):
        FeatureSet.of_cuts(tmp_path / "my_cuts.jsonl.gz")
    with pytest.raises(DataError, match="0 cuts manifests of part 'train'"):
        FeatureSet.in_dir(tmp_path, "train")
    with pytest.raises(DataError, match="no record of the fbank options"):
        fbank_config(tmp_path)
