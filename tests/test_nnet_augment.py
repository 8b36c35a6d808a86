"""Feature augmentation of stage 6 (asrhybrid.nnet.augment): VTLP against Kaldi's own VTLN filterbanks, and
SpecAugment's masks."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asrhybrid.kaldi_tables import AlignmentTable, alignment_table_writer
from asrhybrid.nnet.augment import Augmentation, mel, mel_centers, warp_log_mel


def _kaldi_fbank(samples: np.ndarray, sample_rate: int, num_bins: int, vtln_warp: float) -> np.ndarray:
    import kaldifeat

    opts = kaldifeat.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = num_bins
    fbank = kaldifeat.Fbank(opts)
    return fbank(torch.from_numpy(samples.astype(np.float32) * 32768), vtln_warp=vtln_warp).numpy()


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_warp_approaches_kaldis_vtln_filterbank(yesno_dir, alpha):
    """Kaldi's VTLN puts filter i at (nominal centre / warp), so it reads the spectrum where our warp with
    alpha = 1 / warp reads it; away from the band edges (where the two piecewise-linear warps bend
    differently), our warped log-mel energies are much closer to Kaldi's than the unwarped ones."""
    samples, rate = sf.read(sorted(yesno_dir.glob("*.wav"))[0])
    plain = _kaldi_fbank(samples, rate, 23, 1.0)
    kaldi = _kaldi_fbank(samples, rate, 23, 1 / alpha)
    ours = warp_log_mel(plain, alpha, rate)
    hz = 700 * np.expm1(mel_centers(23, rate) / 1127)
    inner = (hz > 300) & (hz < 2800)
    before = np.abs(plain - kaldi)[:, inner].mean()
    after = np.abs(ours - kaldi)[:, inner].mean()
    assert after < 0.5 * before, (before, after)


def test_vtlp_factor_one_is_the_identity_and_a_peak_moves_to_f_over_alpha():
    rate, bins = 16000, 40
    centers = mel_centers(bins, rate)
    feats = np.tile(-(((centers - mel(1000.0)) / 40.0) ** 2), (3, 1))  # a smooth peak at 1 kHz
    np.testing.assert_allclose(warp_log_mel(feats, 1.0, rate), feats, atol=1e-9)
    warped = warp_log_mel(feats, 1.1, rate)
    peak_hz = 700 * np.expm1(centers[warped[0].argmax()] / 1127)
    spacing_hz = 700 * np.expm1(centers[1:] / 1127) - 700 * np.expm1(centers[:-1] / 1127)
    assert abs(peak_hz - 1000 / 1.1) <= spacing_hz.max()
    assert warped.shape == feats.shape


def test_masks_zero_bands_and_runs_within_their_widths_and_repeat_with_the_seed():
    aug = Augmentation(freq_masks=2, freq_mask_width=5, time_masks=3, time_mask_width=7)
    feats = torch.ones(200, 40)
    masked = aug.mask(feats, torch.Generator().manual_seed(3))
    again = aug.mask(feats, torch.Generator().manual_seed(3))
    assert torch.equal(masked, again) and torch.equal(feats, torch.ones(200, 40))  # the input is not touched
    zero_bins = int((masked == 0).all(0).sum())
    zero_frames = int((masked == 0).all(1).sum())
    assert 0 < zero_bins <= 2 * 5 and 0 < zero_frames <= 3 * 7
    assert int((masked == 0).sum()) == zero_bins * 200 + zero_frames * 40 - zero_bins * zero_frames
    assert not Augmentation().active and aug.active


def planted_targets(cuts, ali: Path) -> AlignmentTable:
    """A pdf alignment table of the cuts (frame t -> pdf t mod 7), open for reading by key."""
    with alignment_table_writer(ali) as write:
        for cut in cuts:
            write(cut.id, np.arange(cut.num_frames) % 7)
    return AlignmentTable(ali)


def test_training_batches_are_augmented_reproducibly_and_keep_their_targets(yesno_fbank_cuts, tmp_path):
    """The trainer's batches of real yesno cuts: with an augmentation the features change and repeat with the
    generator's seed, the targets stay the alignment's."""
    from asrhybrid.features.cmvn import FeatureNormalizer
    from asrhybrid.nnet.batches import IGNORE
    from asrhybrid.nnet.batches import frame_batches as _batches

    cuts = yesno_fbank_cuts
    targets = planted_targets(cuts, tmp_path / "ali_pdf.ark")
    normalizer = FeatureNormalizer.for_cuts("speaker", np.zeros(23), np.ones(23), cuts)

    def batches(augmentation, seed):
        out = list(
            _batches(cuts, targets, normalizer, 100.0, torch.Generator().manual_seed(seed), augmentation=augmentation)
        )
        return torch.cat([x.flatten() for x, _ in out]), torch.cat([y.flatten() for _, y in out])

    aug = Augmentation(vtlp=0.1, freq_masks=1, freq_mask_width=3, time_masks=1, time_mask_width=5)
    plain_x, plain_y = batches(None, 0)
    x, y = batches(aug, 0)
    again_x, _ = batches(aug, 0)
    other_x, _ = batches(aug, 1)
    assert torch.equal(x, again_x) and not torch.equal(x, other_x)
    assert x.shape == plain_x.shape and not torch.allclose(x, plain_x)
    assert torch.equal(y, plain_y) and (y != IGNORE).any()
    targets.close()


def test_noise_keeps_the_hybrid_frames_in_place(yesno_fbank_cuts, tmp_path):
    """noise_snr for stage 6 (WaveformPerturbation without speeds): the features of half the utterances are
    computed again from noisy audio, frame for frame where the stored ones are (at a negligible noise level they
    equal the stored features), reproducibly, and the targets stay the alignment's."""
    from asrhybrid.features.cmvn import FeatureNormalizer
    from asrhybrid.features.fbank import KaldiFbankConfig
    from asrhybrid.nnet.augment import WaveformPerturbation
    from asrhybrid.nnet.batches import frame_batches as _batches

    cuts = yesno_fbank_cuts
    config = KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)
    for cut in cuts:  # an inaudible noise: the features computed again are the stored ones (lilcom's precision)
        silent = WaveformPerturbation([], config, [200.0, 200.0])
        feats, speed = silent.features(cut, torch.Generator().manual_seed(0))
        assert speed == 1.0 and feats.shape == (cut.num_frames, 23)
        np.testing.assert_allclose(feats, cut.load_features(), atol=0.05)

    targets = planted_targets(cuts, tmp_path / "ali_pdf.ark")
    normalizer = FeatureNormalizer.for_cuts("global", np.zeros(23), np.ones(23), cuts)
    noise = WaveformPerturbation([], config, [10.0, 10.0])

    def per_utterance(perturbation, seed):
        out = list(
            _batches(cuts, targets, normalizer, 1.0, torch.Generator().manual_seed(seed), perturbation=perturbation)
        )  # 1 s a batch: one utterance each
        return [(x[0], y[0]) for x, y in out]

    plain, noisy, again = per_utterance(None, 0), per_utterance(noise, 0), per_utterance(noise, 0)
    assert len(plain) == len(noisy) == len(cuts)
    changed = 0
    for (px, py), (nx, ny), (ax, _) in zip(plain, noisy, again):
        assert nx.shape == px.shape and torch.equal(ny, py) and torch.equal(nx, ax)
        changed += not torch.allclose(nx, px)
    assert 0 < changed < len(cuts) or len(cuts) < 3  # half the utterances, drawn per utterance
    targets.close()


def test_chain_frame_shift_places_each_utterance_targets_at_one_phase(yesno_fbank_cuts, tmp_path):
    """Kaldi's frame-shift augmentation of chain examples: with subsampling 3 and frame_shift, target t of an
    utterance sits at input frame 3 t + k, k one draw per utterance in 0..2 (several phases over the corpus,
    repeated with the seed); each chunk's row names the index of its first target; held-out batches (no
    generator) and training without frame_shift stay at phase 0."""
    from asrhybrid.features.cmvn import FeatureNormalizer
    from asrhybrid.nnet.batches import IGNORE
    from asrhybrid.nnet.batches import frame_batches as _batches

    cuts = yesno_fbank_cuts
    with alignment_table_writer(tmp_path / "ali_sub.ark") as write:
        for cut in cuts:  # targets at a third of the frame rate: target t is t (its own index)
            write(cut.id, np.arange(-(-cut.num_frames // 3)))
    targets = AlignmentTable(tmp_path / "ali_sub.ark")
    normalizer = FeatureNormalizer.for_cuts("global", np.zeros(23), np.ones(23), cuts)

    def phases(generator, frame_shift, chunk=0):
        """Per utterance the phases k of its rows (target t at input frame 3 t + k where the row starts at its
        first frame: whole utterances)."""
        found: dict[str, set[int]] = {}
        for _, y, rows in _batches(
            cuts,
            targets,
            normalizer,
            100.0,
            generator,
            chunk,
            10,
            0,
            with_cuts=True,
            subsampling=3,
            frame_shift=frame_shift,
        ):
            for row, (cut, first) in zip(y, rows):
                where = torch.nonzero(row != IGNORE).squeeze(1)
                values = row[where]
                assert int(values[0]) == first and bool((torch.diff(values) == 1).all())
                assert bool((torch.diff(where) == 3).all())
                found.setdefault(cut.id, set()).update((where - 3 * values).tolist())
        return found

    shifted = phases(torch.Generator().manual_seed(0), True)
    assert all(len(k) == 1 and k <= {0, 1, 2} for k in shifted.values()) and len(shifted) == len(cuts)
    assert len(set().union(*shifted.values())) > 1
    assert phases(torch.Generator().manual_seed(0), True) == shifted
    assert set().union(*phases(torch.Generator().manual_seed(0), False).values()) == {0}
    assert set().union(*phases(None, True).values()) == {0}
    phases(torch.Generator().manual_seed(0), True, chunk=50)  # chunks: each row's first index is its first target
    targets.close()
