"""The boundary-error metric on the synthetic corpus's reference times (no model: the metric itself)."""

from __future__ import annotations

import pytest

from asrhybrid.align.quality import boundary_errors
from asrhybrid.data.prepare import prepare_data
from asrhybrid.data.synth.corpus import SynthConfig, generate_corpus
from asrhybrid.features.compute import compute_fbank
from asrhybrid.features.fbank import KaldiFbankConfig
from asrhybrid.features.layout import FeatureSet


def write_ctms(cuts, out, shift_s: float):
    """CTMs from the reference itself, every time moved by ``shift_s``; phones tile silence-free words."""
    words, phones = [], []
    for cut in cuts:
        sup = cut.supervisions[0]
        for a in sup.alignment["word"]:
            words.append(f"{cut.recording_id} 1 {a.start + shift_s:.4f} {a.duration:.4f} {a.symbol}\n")
        for a in sup.alignment["phone"]:
            phones.append(f"{cut.recording_id} 1 {a.start + shift_s:.4f} {a.duration:.4f} {a.symbol}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "word.ctm").write_text("".join(words))
    (out / "phone.ctm").write_text("".join(phones))


@pytest.fixture(scope="module")
def synth_cuts(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    cfg = SynthConfig(
        seed=1,
        num_speakers=4,
        dev_speakers=1,
        test_speakers=1,
        train_hours=0.01,
        dev_minutes=0.05,
        test_minutes=0.05,
        max_utterances_per_part=3,
    )
    generate_corpus(root / "corpus", cfg)
    prepare_data("synth", "synth", root / "corpus", root / "m", 16000)
    compute_fbank(root / "m", root / "f", "synth", "train", KaldiFbankConfig(num_mel_bins=40))
    return FeatureSet(root / "f", "synth", "train").cuts, root


def test_reference_against_itself_is_exact(synth_cuts):
    from lhotse import load_manifest

    path, root = synth_cuts
    write_ctms(load_manifest(path), root / "same", 0.0)
    report = boundary_errors(path, root / "same")
    assert report["word_boundaries"]["mean_ms"] == pytest.approx(0.0, abs=0.1)
    assert report["phone_boundaries"]["within_10ms"] == 1.0
    assert report["phone_boundaries"]["words_with_comparable_phones"] == report["phone_boundaries"]["words"] > 5


def test_a_shift_shows_as_the_error(synth_cuts):
    from lhotse import load_manifest

    path, root = synth_cuts
    write_ctms(load_manifest(path), root / "late", 0.015)
    report = boundary_errors(path, root / "late")
    assert report["word_boundaries"]["mean_ms"] == pytest.approx(15.0, abs=0.1)
    assert report["word_boundaries"]["within_10ms"] == 0.0 and report["word_boundaries"]["within_20ms"] == 1.0
