"""Bad corpus input: each class gets a message naming the utterance and file, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from lhotse import load_manifest

from asrhybrid.data.prepare import prepare_data
from asrhybrid.errors import DataError
from asrhybrid.features.compute import compute_fbank
from asrhybrid.features.fbank import KaldiFbankConfig
from asrhybrid.features.layout import FeatureSet


def write_wav(path, seconds=0.5, rate=16000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(path, x, rate, subtype="PCM_16")
    return path


def make_kaldi_dir(root, utts, text_lines=None):
    """utts: list of (utt_id, speaker, text, wav_path)."""
    d = root / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("".join(f"{u} {w}\n" for u, _, _, w in utts))
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _, _ in utts))
    if text_lines is None:
        (d / "text").write_text("".join(f"{u} {t}\n" for u, _, t, _ in utts))
    else:
        (d / "text").write_bytes(text_lines)
    return root


def good_utts(root, n=3, rate=16000):
    wavs = root / "wavs"
    wavs.mkdir(exist_ok=True)
    return [
        (f"spk1-u{i}", "spk1", f"HELLO WORLD {i}", write_wav(wavs / f"u{i}.wav", rate=rate, seed=i)) for i in range(n)
    ]


def prepare(corpus_dir, out, **kw):
    return prepare_data("t", "kaldi", corpus_dir, out, sample_rate=16000, **kw)


def expect_error(corpus_dir, out, *fragments, **kw):
    with pytest.raises(DataError) as info:
        prepare(corpus_dir, out, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not list(out.glob("*.jsonl.gz")), "nothing may be written on bad input"
    return message


def test_good_dir_gives_manifests(tmp_path):
    corpus = make_kaldi_dir(tmp_path / "c", good_utts(tmp_path))
    paths = prepare(corpus, tmp_path / "m")
    sups = load_manifest(paths["train"])
    assert [s.id for s in sups] == ["spk1-u0", "spk1-u1", "spk1-u2"]
    assert sups[0].text == "HELLO WORLD 0" and sups[0].speaker == "spk1"


def test_missing_file(tmp_path):
    utts = good_utts(tmp_path)
    utts[1] = (*utts[1][:3], tmp_path / "wavs" / "nope.wav")
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u1", "nope.wav", "missing audio file")


def test_corrupt_wav(tmp_path):
    utts = good_utts(tmp_path)
    bad = tmp_path / "wavs" / "corrupt.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(256)))
    utts[0] = (*utts[0][:3], bad)
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u0", "corrupt.wav", "unreadable audio")


def test_truncated_wav(tmp_path):
    utts = good_utts(tmp_path)
    data = utts[2][3].read_bytes()
    cut = tmp_path / "wavs" / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])  # the header still promises the whole signal
    utts[2] = (*utts[2][:3], cut)
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u2", "cut.wav")


def test_zero_length_audio(tmp_path):
    utts = good_utts(tmp_path)
    empty = tmp_path / "wavs" / "empty.wav"
    sf.write(empty, np.zeros(0), 16000, subtype="PCM_16")
    utts[0] = (*utts[0][:3], empty)
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u0", "empty.wav", "zero-length")


def test_wrong_sample_rate_without_resampling(tmp_path):
    utts = good_utts(tmp_path)
    odd = write_wav(tmp_path / "wavs" / "odd.wav", rate=8000)
    utts[1] = (*utts[1][:3], odd)
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u1", "odd.wav", "8000 Hz", "16000 Hz", resample=False)


def test_mixed_sample_rates_are_resampled_to_the_recipe_rate(tmp_path):
    utts = good_utts(tmp_path)
    utts[1] = (*utts[1][:3], write_wav(tmp_path / "wavs" / "odd.wav", seconds=0.5, rate=8000))
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    prepare(corpus, tmp_path / "m")
    compute_fbank(tmp_path / "m", tmp_path / "f", "t", "train", KaldiFbankConfig(num_mel_bins=40))
    cuts = load_manifest(FeatureSet(tmp_path / "f", "t", "train").cuts)
    odd = cuts["spk1-u1"]
    assert odd.sampling_rate == 16000
    assert odd.load_audio().shape[1] == 8000  # 0.5 s at 16 kHz
    assert odd.load_features().shape == (50, 40)


def test_stereo_is_refused(tmp_path):
    utts = good_utts(tmp_path)
    utts[0] = (*utts[0][:3], write_wav(tmp_path / "wavs" / "st.wav", channels=2))
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u0", "st.wav", "2 channels")


def test_empty_transcript(tmp_path):
    utts = good_utts(tmp_path)
    utts[2] = (*utts[2][:2], "", utts[2][3])
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    expect_error(corpus, tmp_path / "m", "spk1-u2", "empty transcript", "u2.wav")


def test_duplicate_utterance_id(tmp_path):
    utts = good_utts(tmp_path)
    lines = "".join(f"{u} {t}\n" for u, _, t, _ in utts) + f"{utts[0][0]} AGAIN\n"
    corpus = make_kaldi_dir(tmp_path / "c", utts, text_lines=lines.encode())
    expect_error(corpus, tmp_path / "m", "duplicate utterance id 'spk1-u0'", "text:4")


def test_non_utf8_transcript(tmp_path):
    utts = good_utts(tmp_path)
    lines = f"{utts[0][0]} HELLO\n".encode() + f"{utts[1][0]} CAF".encode() + b"\xe9\n" + f"{utts[2][0]} OK\n".encode()
    corpus = make_kaldi_dir(tmp_path / "c", utts, text_lines=lines)
    expect_error(corpus, tmp_path / "m", "text:2", "not valid UTF-8", "spk1-u1")


def test_all_problems_reported_together(tmp_path):
    utts = good_utts(tmp_path)
    utts[0] = (*utts[0][:3], tmp_path / "wavs" / "gone.wav")
    utts[1] = (*utts[1][:2], "", utts[1][3])
    corpus = make_kaldi_dir(tmp_path / "c", utts)
    message = expect_error(corpus, tmp_path / "m", "gone.wav", "empty transcript")
    assert "2 problem(s)" in message


def test_bad_input_leaves_earlier_outputs_intact(tmp_path):
    corpus = make_kaldi_dir(tmp_path / "c", good_utts(tmp_path))
    out = tmp_path / "m"
    prepare(corpus, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (corpus / "train" / "text").write_text("spk1-u0 \nspk1-u1 A\nspk1-u2 B\n")
    with pytest.raises(DataError, match="spk1-u0"):
        prepare(corpus, out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".done")}
    assert after == {k: v for k, v in before.items() if not k.startswith(".done")}


def segmented_dir(root, seconds, segments):
    """A Kaldi dir of one recording cut by ``segments``: [(utt, start, end, text)]."""
    wav = write_wav(root / "rec1.wav", seconds=seconds)
    d = root / "c" / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text(f"rec1 {wav}\n")
    (d / "segments").write_text("".join(f"{u} rec1 {b} {e}\n" for u, b, e, _ in segments))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, _, _, t in segments))
    (d / "utt2spk").write_text("".join(f"{u} s\n" for u, _, _, _ in segments))
    return root / "c"


def test_segments_give_one_cut_per_utterance(tmp_path):
    corpus = segmented_dir(tmp_path, 2.0, [("rec1-a", 0.0, 0.8, "FIRST PART"), ("rec1-b", 1.0, -1, "SECOND PART")])
    prepare(corpus, tmp_path / "m")
    compute_fbank(tmp_path / "m", tmp_path / "f", "t", "train", KaldiFbankConfig(num_mel_bins=40))
    cuts = load_manifest(FeatureSet(tmp_path / "f", "t", "train").cuts)
    assert sorted(cuts.ids) == ["rec1-a", "rec1-b"]
    assert cuts["rec1-a"].load_features().shape == (80, 40)
    assert cuts["rec1-b"].load_features().shape == (100, 40)  # end -1: to the end of the recording
    assert cuts["rec1-b"].supervisions[0].text == "SECOND PART"


def test_segment_outside_recording(tmp_path):
    corpus = segmented_dir(tmp_path, 1.0, [("rec1-a", 0.5, 3.0, "WORDS")])
    expect_error(corpus, tmp_path / "m", "rec1-a", "outside recording")


# --- issue 9's bad-input classes: each a clear error naming the file, utterance or line, or a counted skip ---


def test_utterances_without_transcript_are_counted_and_logged(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    utts = good_utts(tmp_path, n=4)
    root = make_kaldi_dir(tmp_path / "data", utts)
    lines = (root / "train" / "text").read_text().splitlines()
    (root / "train" / "text").write_text("\n".join(lines[:2]) + "\n")  # two utterances lose their transcript
    paths = prepare(root, tmp_path / "m")
    assert len(load_manifest(paths["train"])) == 2
    assert "2 utterance(s) of utt2spk have no line in text and are left out: spk1-u2 spk1-u3" in caplog.text


def test_wav_scp_entries_into_archives_are_refused_by_line(tmp_path):
    utts = good_utts(tmp_path, n=2)
    root = make_kaldi_dir(
        tmp_path / "data", [(u, s, t, "feats.ark:123" if k == 1 else w) for k, (u, s, t, w) in enumerate(utts)]
    )
    expect_error(root, tmp_path / "m", "wav.scp:2", "feats.ark:123", "Kaldi archive")


def test_audio_shorter_than_one_frame_is_refused(tmp_path):
    utts = good_utts(tmp_path, n=2)
    short = write_wav(tmp_path / "wavs" / "short.wav", seconds=0.01)
    root = make_kaldi_dir(tmp_path / "data", utts + [("spk1-short", "spk1", "HI", short)])
    expect_error(root, tmp_path / "m", "spk1-short", "shorter than one feature frame")


def test_cuts_need_exactly_one_supervision_and_a_cut_set_must_not_be_empty(tmp_path):
    from lhotse import CutSet

    from asrhybrid.data.manifests import load_cuts, transcript

    utts = good_utts(tmp_path, n=2)
    paths = prepare(make_kaldi_dir(tmp_path / "data", utts), tmp_path / "m")
    cuts = CutSet.from_manifests(
        recordings=load_manifest(tmp_path / "m" / "t_recordings_train.jsonl.gz"),
        supervisions=load_manifest(paths["train"]),
    )
    cut = cuts[0]
    assert transcript(cut, "cuts.jsonl.gz") == "HELLO WORLD 0"
    two = cut.append(cuts[1])
    with pytest.raises(DataError, match="has 2 supervisions"):
        transcript(two, "cuts.jsonl.gz")
    none = cut.drop_supervisions()
    with pytest.raises(DataError, match=f"cut '{none.id}' \\(cuts.jsonl.gz\\) has 0 supervisions"):
        transcript(none, "cuts.jsonl.gz")
    CutSet.from_cuts([]).to_file(tmp_path / "empty.jsonl.gz")
    with pytest.raises(DataError, match="empty.jsonl.gz: no cuts"):
        load_cuts(tmp_path / "empty.jsonl.gz")
    with pytest.raises(DataError, match="missing.jsonl.gz not found"):
        load_cuts(tmp_path / "missing.jsonl.gz")


@pytest.mark.parametrize("what", ["topo", "arpa", "ali"])
def test_a_missing_upstream_file_is_an_error_naming_it(tmp_path, what):
    from asrhybrid.hmm import init_mono_model
    from asrhybrid.kaldi_tables import read_alignments
    from asrhybrid.lm.train import arpa_to_g

    (tmp_path / "lang").mkdir()
    (tmp_path / "lang" / "words.txt").write_text("<eps> 0\nA 1\n")
    call = {
        "topo": lambda: init_mono_model(tmp_path / "lang", tmp_path / "mono"),
        "arpa": lambda: arpa_to_g(tmp_path / "small.arpa", tmp_path / "lang" / "words.txt", tmp_path / "G.fst"),
        "ali": lambda: read_alignments(tmp_path / "exp" / "ali.ark"),
    }[what]
    name = {"topo": "topo", "arpa": "small.arpa", "ali": "ali.ark"}[what]
    with pytest.raises(DataError, match=f"{name} not found"):
        call()


def test_words_missing_from_a_given_lexicon_are_reported(tmp_path):
    from asrhybrid.lang.dicts import prepare_dict

    assert prepare_dict("yesno", tmp_path / "d1", ["YES NO MAYBE"]) == ["MAYBE"]
    prepare_dict("yesno", tmp_path / "given", [])
    assert prepare_dict(str(tmp_path / "given"), tmp_path / "d2", ["YES PERHAPS NO"]) == ["PERHAPS"]
