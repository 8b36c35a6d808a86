"""asrhybrid.features.fbank against features computed by Kaldi's own compute-fbank-feats.

The references are kaldifeat's test data (../shared/testdata/kaldi_feats, made
with Kaldi's binaries); the tolerance is kaldifeat's own, rtol=1e-1.
"""

from __future__ import annotations

import os

import kaldi_native_io as kio
import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import Recording

from asrhybrid.features.fbank import KALDI_SAMPLE_SCALE, KaldiFbank, KaldiFbankConfig, kaldifeat_available

# `make setup` builds kaldifeat: under CI=true its absence fails the run instead of skipping its tests
NO_KALDIFEAT = not kaldifeat_available() and os.environ.get("CI") != "true"
BACKENDS = [
    "kaldi-native-fbank",
    pytest.param("kaldifeat", marks=pytest.mark.skipif(NO_KALDIFEAT, reason="kaldifeat not installed")),
]

# (reference file, Kaldi options it was computed with besides --dither=0)
KALDI_CASES = [
    ("kaldifeat_test.txt", dict(num_mel_bins=23, snip_edges=True)),
    ("kaldifeat_test-40.txt", dict(num_mel_bins=40, snip_edges=True)),
    ("kaldifeat_test-40-no-snip-edges.txt", dict(num_mel_bins=40, snip_edges=False)),
    ("kaldifeat_test-with-energy.txt", dict(num_mel_bins=23, snip_edges=True, use_energy=True)),
    ("kaldifeat_test-htk.txt", dict(num_mel_bins=23, snip_edges=True, use_energy=True, htk_compat=True)),
]


def read_kaldi_text_matrix(path) -> np.ndarray:
    with kio.SequentialFloatMatrixReader(f"ark,t:{path}") as reader:
        for _, mat in reader:
            return np.array(mat, copy=True)  # the reader reuses its buffer
    raise AssertionError(f"no matrix in {path}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reference,options", KALDI_CASES, ids=[c[0] for c in KALDI_CASES])
def test_fbank_equals_kaldi(kaldi_feats_dir, backend, reference, options):
    expected = read_kaldi_text_matrix(kaldi_feats_dir / reference)
    # Through Lhotse, as the feature stage reads audio: floats in [-1, 1].
    audio = Recording.from_file(kaldi_feats_dir / "kaldifeat_test.wav").load_audio()[0]
    extractor = KaldiFbank(KaldiFbankConfig(sampling_rate=16000, backend=backend, device="cpu", **options))
    feats = extractor.extract(audio, 16000)
    assert feats.shape == expected.shape
    np.testing.assert_allclose(feats, expected, rtol=1e-1, atol=1e-8)
    # Tighter than upstream's tolerance: what we actually reach.
    assert np.abs(feats - expected).max() < 0.05


def test_lhotse_audio_times_scale_is_kaldis_wav_reader(kaldi_feats_dir):
    """Kaldi's WAV reader gives raw int16 values; kaldi_test_matlab.ascii holds them (Matlab wavread*32768)."""
    expected = np.array(
        (kaldi_feats_dir / "kaldi_test_matlab.ascii").read_text().replace("[", " ").replace("]", " ").split(),
        dtype=np.float64,
    )
    audio = Recording.from_file(kaldi_feats_dir / "kaldi_test.wav").load_audio()[0]
    np.testing.assert_array_equal(audio.astype(np.float64) * KALDI_SAMPLE_SCALE, expected)


@pytest.mark.skipif(NO_KALDIFEAT, reason="kaldifeat not installed")
def test_kaldifeat_and_kaldi_native_fbank_agree_on_batches():
    rng = np.random.default_rng(0)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (8000, 12345, 16000)]
    cfg = dict(sampling_rate=16000, num_mel_bins=80, device="cpu")
    a = KaldiFbank(KaldiFbankConfig(backend="kaldifeat", **cfg)).extract_batch(waves, 16000)
    b = KaldiFbank(KaldiFbankConfig(backend="kaldi-native-fbank", **cfg)).extract_batch(waves, 16000)
    for x, y, w in zip(a, b, waves):
        assert x.shape == y.shape == ((len(w) + 80) // 160, 80)  # Kaldi's frame count without snip-edges
        np.testing.assert_allclose(x, y, atol=5e-3, rtol=1e-4)


def test_wrong_sample_rate_is_refused():
    extractor = KaldiFbank(KaldiFbankConfig(sampling_rate=16000, backend="kaldi-native-fbank"))
    with pytest.raises(ValueError, match="16000 Hz got 8000 Hz"):
        extractor.extract(np.zeros(8000, np.float32), 8000)


def test_cuda_device_needs_kaldifeat():
    with pytest.raises(ValueError, match="CPU only"):
        KaldiFbank(KaldiFbankConfig(backend="kaldi-native-fbank", device="cuda"))


@pytest.mark.skipif(not (kaldifeat_available() and torch.cuda.is_available()), reason="needs kaldifeat and CUDA")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(1)
    waves = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in (8000, 16000)]
    cpu = KaldiFbank(KaldiFbankConfig(backend="kaldifeat", device="cpu")).extract_batch(waves, 16000)
    gpu = KaldiFbank(KaldiFbankConfig(backend="kaldifeat", device="cuda")).extract_batch(waves, 16000)
    for x, y in zip(cpu, gpu):
        np.testing.assert_allclose(x, y, atol=1e-3)


def test_sf_reads_what_we_scale(tmp_path):
    """A full-scale int16 sample stays full scale through Lhotse's float conversion."""
    path = tmp_path / "x.wav"
    sf.write(path, np.array([0, 32767, -32768, 1], dtype=np.int16), 16000, subtype="PCM_16")
    audio = Recording.from_file(path).load_audio()[0]
    np.testing.assert_array_equal(audio * KALDI_SAMPLE_SCALE, [0, 32767, -32768, 1])
