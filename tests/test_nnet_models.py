"""Stage 6's model pieces: LSTMP (Sak 2014) against torch's cuDNN LSTMP and the paper's parameter count,
the output delay, and priors with silence down-weighting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrhybrid.nnet.lstmp import LstmpAM, PeepholeLSTMP
from asrhybrid.nnet.priors import log_priors, scaled_loglikes


def weights(module: torch.nn.Module) -> int:
    """Parameters that are not biases."""
    return sum(p.numel() for name, p in module.named_parameters() if "bias" not in name)


@pytest.mark.parametrize("n_i, n_c, n_r, n_o", [(40, 16, 8, 30), (23, 800, 512, 120)])
def test_lstmp_parameter_count_is_the_papers(n_i, n_c, n_r, n_o):
    """Sak 2014: n_c*n_r*4 + n_i*n_c*4 + n_r*n_o + n_c*n_r + n_c*3 weights with peepholes, n_c*3 fewer without."""
    formula = n_c * n_r * 4 + n_i * n_c * 4 + n_r * n_o + n_c * n_r + n_c * 3
    with_peepholes = LstmpAM(n_i, n_o, cells=n_c, proj=n_r, layers=1, kind="peephole")
    assert weights(with_peepholes) == formula
    assert weights(LstmpAM(n_i, n_o, cells=n_c, proj=n_r, layers=1, kind="cudnn")) == formula - n_c * 3


def test_peephole_cell_equals_torchs_lstmp_without_peepholes_or_clipping():
    """Our equations with zero peepholes and no clipping compute what torch.nn.LSTM(proj_size) computes."""
    torch.manual_seed(0)
    reference = torch.nn.LSTM(7, 12, num_layers=2, proj_size=5, batch_first=True)
    ours = PeepholeLSTMP(7, 12, 5, layers=2, cell_clip=None)
    with torch.no_grad():
        for k in range(2):
            ours.w_x[k].weight.copy_(getattr(reference, f"weight_ih_l{k}"))
            ours.w_x[k].bias.copy_(getattr(reference, f"bias_ih_l{k}") + getattr(reference, f"bias_hh_l{k}"))
            ours.w_r[k].weight.copy_(getattr(reference, f"weight_hh_l{k}"))
            ours.w_rm[k].weight.copy_(getattr(reference, f"weight_hr_l{k}"))
    x = torch.randn(3, 11, 7)
    torch.testing.assert_close(ours(x), reference(x)[0], rtol=1e-5, atol=1e-6)


def test_cell_clipping_bounds_the_cell():
    torch.manual_seed(1)
    lstm = PeepholeLSTMP(4, 6, 3, cell_clip=0.5)
    with torch.no_grad():
        lstm.w_x[0].bias.fill_(20.0)  # input and forget gates open, g saturated: c grows by ~1 a frame
    cells = []
    lstm.w_rm[0].register_forward_hook(lambda module, inputs, out: cells.append(inputs[0]))
    lstm(torch.randn(1, 10, 4))
    # o * tanh(c) with o ~ 1: tanh(0.5) when clipped at 0.5, tanh(~10) = 1 when not
    assert max(float(c.detach().max()) for c in cells) == pytest.approx(np.tanh(0.5), abs=1e-3)


@pytest.mark.parametrize("kind", ["cudnn", "peephole"])
def test_output_t_hears_exactly_delay_frames_ahead(kind):
    torch.manual_seed(2)
    model = LstmpAM(5, 9, cells=8, proj=4, layers=2, delay=5, kind=kind).eval()
    x = torch.randn(2, 20, 5)
    out = model(x)
    assert out.shape == (2, 20, 9)
    t = 6
    for ahead, changes in ((5, True), (6, False)):
        y = x.clone()
        y[:, t + ahead] += 1.0
        moved = (model(y)[:, t] - out[:, t]).abs().max().item()
        assert (moved > 1e-6) == changes, (ahead, moved)


def test_priors_divide_silence_counts_by_2_7():
    counts = np.array([540.0, 100.0, 100.0, 60.0, 0.0])  # pdf 0 silence; pdf 4 never seen
    log_p = log_priors(counts, silence_pdfs=[0], silence_scale=2.7, floor=1e-6)
    expected = np.array([200.0, 100.0, 100.0, 60.0, 0.0]) / 460.0
    expected = np.maximum(expected, 1e-6)
    np.testing.assert_allclose(np.exp(log_p), expected / expected.sum(), rtol=1e-12)
    assert np.exp(log_p).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        log_priors(np.zeros(3))


def test_scaled_loglikes_is_acwt_times_posterior_over_prior():
    log_post = torch.log_softmax(torch.randn(4, 3), dim=-1)
    log_prior = np.log(np.array([0.5, 0.3, 0.2]))
    got = scaled_loglikes(log_post, log_prior, acwt=0.1, prior_scale=0.8)
    torch.testing.assert_close(got, 0.1 * (log_post - 0.8 * torch.tensor(log_prior, dtype=torch.float32)))
    assert scaled_loglikes(log_post.numpy(), log_prior).dtype == np.float32


@pytest.mark.parametrize("fast_output", ["softmax", "sigmoid", "logits"])
def test_fast_slow_looks_exactly_lookahead_frames_ahead(fast_output):
    """A change at frame t+k changes output t; one at t+k+1 does not (the slow encoder never looks ahead)."""
    from asrhybrid.nnet.fast_slow import FastSlowAM

    torch.manual_seed(3)
    k = 4
    model = FastSlowAM(6, 11, hidden=16, slow_layers=2, fast_hidden=8, lookahead=k, fast_output=fast_output).eval()
    x = torch.randn(2, 25, 6)
    out = model(x)
    assert out.shape == (2, 25, 11)
    for t in (0, 10, 20):
        for ahead, changes in ((k, True), (k + 1, False)):
            if t + ahead >= 25:
                continue
            y = x.clone()
            y[:, t + ahead] += 1.0
            moved = (model(y)[:, t] - out[:, t]).abs().max().item()
            assert (moved > 1e-6) == changes, (t, ahead, moved)
    slow = sum(p.numel() for p in model.slow.parameters())
    fast = sum(p.numel() for p in model.fast.parameters())
    assert fast < slow / 3  # the fast model is the small one


def test_chunks_cover_every_target_once_with_their_context():
    """Kaldi-style chunks: targets tile the utterance exactly; inputs add left context and the model's right."""
    from asrhybrid.nnet.batches import chunk_spans

    assert chunk_spans(37, 0, 40, 5) == [(0, 0, 37, 37)]
    spans = chunk_spans(370, 150, 40, 5)
    assert [(s, e) for _, s, e, _ in spans] == [(0, 150), (150, 300), (300, 370)]
    assert [(a, b) for a, _, _, b in spans] == [(0, 155), (110, 305), (260, 370)]


@pytest.mark.parametrize(
    "system, options",
    [
        ("dnn", {"context": 2, "hidden": 16, "layers": 1}),
        ("lstmp", {"cells": 8, "proj": 4, "layers": 1, "delay": 3}),
        ("fast_slow", {"hidden": 8, "slow_layers": 1, "fast_hidden": 4, "lookahead": 2}),
        ("slow", {"hidden": 8, "slow_layers": 1}),
    ],
)
def test_a_chunk_with_its_right_context_scores_its_targets_as_the_whole_utterance_does(system, options):
    """The models with a bounded window (DNN splice; Fast/Slow fast path and the LSTMP output layer only see
    the right context given): a mid-utterance chunk's targets get the same scores as in the whole utterance
    once the chunk starts at frame 0 (the recurrent state then matches too)."""
    from asrhybrid.nnet.batches import chunk_spans
    from asrhybrid.nnet.models import build_model

    torch.manual_seed(3)
    model = build_model(system, 6, 11, options).eval()
    x = torch.randn(1, 60, 6)
    whole = model(x)
    a, s, e, b = chunk_spans(60, 25, 25, model.right_context)[0]  # (0, 0, 25, 25 + right)
    torch.testing.assert_close(model(x[:, a:b])[:, s - a : e - a], whole[:, s:e], rtol=1e-5, atol=1e-6)


def test_checkpoint_average_is_the_mean_of_the_weights(tmp_path):
    from asrhybrid.nnet.trainer import average_models

    layers = [torch.nn.Linear(3, 2) for _ in range(3)]
    for k, layer in enumerate(layers):
        torch.save({"model": layer.state_dict()}, tmp_path / f"epoch-{k}.pt")
    averaged = average_models([tmp_path / f"epoch-{k}.pt" for k in range(3)])
    torch.testing.assert_close(averaged["weight"], sum(layer.weight for layer in layers).detach() / 3)


def test_train_config_rejects_unknown_systems_and_reads_yes_no():
    from asrhybrid.errors import ConfigError
    from asrhybrid.nnet.train import TrainConfig

    assert TrainConfig(amp="no").amp is False
    with pytest.raises(ConfigError, match="unknown acoustic model"):
        TrainConfig(system="tdnn")
    assert TrainConfig(lr=1e-3, final_lr=1e-4, epochs=3).lr_at(3) == pytest.approx(1e-4)
    warm = TrainConfig(lr=1e-3, final_lr=1e-4, epochs=3, warmup_steps=4)
    assert [warm.lr_at_step(1, s) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert warm.lr_at_step(3, 100) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


def test_per_utterance_cmvn_removes_the_utterance_mean_and_keeps_the_global_std():
    from asrhybrid.features.cmvn import FeatureNormalizer

    rng = np.random.default_rng(0)
    feats = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32) + np.arange(4)
    mean, std = np.zeros(4), np.full(4, 2.0)
    out = FeatureNormalizer("utterance", mean, std).array(feats)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out, (feats - feats.mean(axis=0)) / 2.0, rtol=1e-5)
    np.testing.assert_allclose(FeatureNormalizer("global", mean, std).array(feats), feats / 2.0, rtol=1e-6)


def test_speaker_cmvn_normalises_each_speakers_frames_to_zero_mean_unit_variance(yesno_fbank_cuts, tmp_path):
    """Kaldi's per-speaker apply-cmvn --norm-vars on real features: pooled over a speaker's utterances, the
    normalised frames have mean 0 and variance 1; stage 1's statistics file beside the cuts gives the same
    result as a pass over the cuts, and is not used when it lacks a speaker."""
    from asrhybrid.errors import ConfigError
    from asrhybrid.features.cmvn import CmvnStats, FeatureNormalizer, speaker_of, write_cmvn
    from asrhybrid.features.layout import FeatureSet
    from asrhybrid.nnet.train import TrainConfig

    cuts = yesno_fbank_cuts
    mean, std = np.zeros(23), np.ones(23)
    accumulated = FeatureNormalizer.for_cuts("speaker", mean, std, cuts)
    for speaker in ("a", "b"):
        pooled = np.concatenate([accumulated(c).numpy() for c in cuts if speaker_of(c) == speaker])
        np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(pooled.std(axis=0), 1.0, atol=1e-3)
    cut = cuts[0]
    own = FeatureNormalizer("speaker", mean, std).array(cut.load_features())  # no statistics: its own speaker
    np.testing.assert_allclose(own.mean(axis=0), 0.0, atol=1e-4)
    assert not np.allclose(own, accumulated(cut).numpy(), atol=1e-2)

    cuts_path = tmp_path / "x_cuts_dev.jsonl.gz"
    assert FeatureSet.of_cuts(cuts_path).speaker_cmvn == tmp_path / "x_cmvn_dev.ark"
    stats = {}
    for c in cuts:
        stats.setdefault(speaker_of(c), CmvnStats(23)).accumulate(c.load_features() + (speaker_of(c) == "a"))
    write_cmvn(FeatureSet.of_cuts(cuts_path).speaker_cmvn, stats)  # speaker a's statistics shifted by 1: visibly read
    from_file = FeatureNormalizer.for_cuts("speaker", mean, std, cuts, cuts_path)
    a_cut = next(c for c in cuts if speaker_of(c) == "a")
    np.testing.assert_allclose(
        from_file(a_cut).numpy(),
        accumulated(a_cut).numpy() - 1 / from_file._mean_std(a_cut.load_features(), "a")[1],
        atol=1e-4,
    )
    write_cmvn(FeatureSet.of_cuts(cuts_path).speaker_cmvn, {"a": stats["a"]})  # speaker b missing: a pass over the cuts
    np.testing.assert_allclose(
        FeatureNormalizer.for_cuts("speaker", mean, std, cuts, cuts_path)(a_cut).numpy(),
        accumulated(a_cut).numpy(),
        atol=1e-5,
    )
    assert TrainConfig(system="dnn", cmvn="speaker").cmvn == "speaker"
    with pytest.raises(ConfigError, match="global, utterance, speaker"):
        TrainConfig(system="dnn", cmvn="channel")


def test_the_slow_model_alone_is_fast_slow_without_its_fast_path():
    from asrhybrid.nnet.models import build_model

    slow = build_model("slow", 6, 11, {"hidden": 8, "slow_layers": 2})
    full = build_model("fast_slow", 6, 11, {"hidden": 8, "slow_layers": 2, "fast_hidden": 4, "lookahead": 2})
    assert slow.right_context == 0 and not hasattr(slow, "fast")
    slow_params = {n: p.shape for n, p in slow.named_parameters()}
    assert all(full.get_parameter(n).shape == shape for n, shape in slow_params.items() if not n.startswith("joint"))
    x = torch.randn(2, 30, 6)
    assert slow(x).shape == (2, 30, 11)
    y = x.clone()
    y[:, 20:] += 5.0  # a later frame never changes an earlier output
    torch.testing.assert_close(slow(y)[:, :20], slow(x)[:, :20])
