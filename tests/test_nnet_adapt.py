"""Unsupervised speaker adaptation (asrhybrid.nnet.adapt): per-speaker LIN and LHUC transforms on real yesno
features, for every hybrid model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from asrhybrid.errors import ConfigError, DataError
from asrhybrid.features.cmvn import FeatureNormalizer, speaker_of
from asrhybrid.nnet.adapt import (
    AdaptConfig,
    SpeakerAdaptedAM,
    adapt_speakers,
    lhuc_layers,
)
from asrhybrid.nnet.batches import pad_batch
from asrhybrid.nnet.checkpoint import AM, TrainedSystem
from asrhybrid.nnet.inference import iter_loglikes, load_am
from asrhybrid.nnet.models import build_model

MODELS = {
    "dnn": {"context": 2, "hidden": 32, "layers": 2},
    "lstmp": {"cells": 16, "proj": 8, "layers": 2, "delay": 2},
    "fast_slow": {"hidden": 16, "slow_layers": 1, "fast_hidden": 16, "lookahead": 2},
}
NUM_PDFS = 7


def _features(cuts) -> tuple[list[torch.Tensor], list[str]]:
    feats = [torch.as_tensor(c.load_features()) for c in cuts]
    mean = torch.cat(feats).mean(0)
    std = torch.cat(feats).std(0)
    return [(f - mean) / std for f in feats], [speaker_of(c) for c in cuts]


def _model(system: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(system, 23, NUM_PDFS, MODELS[system]).eval()


def _randomise(adapted: SpeakerAdaptedAM, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if not name.startswith("base."):
                p.add_(0.3 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("system", sorted(MODELS))
def test_fresh_transforms_are_the_identity(system, yesno_fbank_cuts):
    feats, speakers = _features(yesno_fbank_cuts)
    base = _model(system)
    x = pad_batch(feats)
    expected = base(x)
    adapted = SpeakerAdaptedAM(base, 23, ["a", "b"], ["lin", "lhuc"]).eval()
    assert lhuc_layers(base), "every hybrid model has hidden units LHUC can scale"
    torch.testing.assert_close(adapted(x, speakers), expected)


@pytest.mark.parametrize("system", sorted(MODELS))
def test_each_sequence_of_a_batch_gets_its_own_speakers_transforms(system, yesno_fbank_cuts):
    feats, speakers = _features(yesno_fbank_cuts)
    assert set(speakers) == {"a", "b"}
    adapted = SpeakerAdaptedAM(_model(system), 23, ["a", "b"], ["lin", "lhuc"]).eval()
    _randomise(adapted)
    with torch.no_grad():
        together = adapted(pad_batch(feats), speakers)
        for k, (f, s) in enumerate(zip(feats, speakers)):
            alone = adapted(f[None], [s])[0]
            torch.testing.assert_close(together[k, : len(f)], alone, rtol=1e-4, atol=1e-5)
            other = adapted(f[None], ["b" if s == "a" else "a"])[0]
            assert not torch.allclose(alone, other, atol=1e-3), "the other speaker's transforms give other scores"
            assert not torch.allclose(alone, adapted.base(f[None])[0], atol=1e-3)


def test_lin_alone_is_an_affine_map_of_the_features(yesno_fbank_cuts):
    feats, speakers = _features(yesno_fbank_cuts)
    base = _model("dnn")
    adapted = SpeakerAdaptedAM(base, 23, ["a", "b"], ["lin"]).eval()
    _randomise(adapted)
    f, s = feats[0], speakers[0]
    k = adapted.speakers[s]
    mapped = f @ adapted.lin_weight[k].T + adapted.lin_bias[k]
    with torch.no_grad():
        torch.testing.assert_close(adapted(f[None], [s]), base(mapped[None]), rtol=1e-4, atol=1e-5)


def test_an_unknown_speaker_is_named_with_its_utterance(yesno_fbank_cuts):
    feats, _ = _features(yesno_fbank_cuts)
    adapted = SpeakerAdaptedAM(_model("dnn"), 23, ["a"], ["lin", "lhuc"])
    with pytest.raises(DataError, match=r"speaker 'b' \(utterance u1\)"):
        adapted(pad_batch(feats[:2]), ["a", "b"], ["u0", "u1"])


def _first_pass(model: torch.nn.Module, cuts, normalizer, shift: int) -> dict[str, np.ndarray]:
    """Targets like a first pass's: the model's own best pdfs, ``shift`` of every 3 frames relabelled, the
    kind of consistent mismatch a new voice causes."""
    targets = {}
    with torch.no_grad():
        for cut in cuts:
            best = model(torch.as_tensor(normalizer(cut))[None])[0].argmax(-1).numpy()
            best[::3] = (best[::3] + shift) % NUM_PDFS
            targets[cut.id] = best
    return targets


@pytest.mark.parametrize("system", ["dnn", "lstmp"])
def test_adaptation_fits_each_speakers_first_pass_and_round_trips_through_final_pt(system, yesno_fbank_cuts, tmp_path):
    cuts = yesno_fbank_cuts
    normalizer = FeatureNormalizer("global", np.zeros(23, np.float32), np.ones(23, np.float32) * 5.0)
    base = _model(system)
    with torch.no_grad():
        lhuc_layers(base)[-1].weight.mul_(5.0)  # the output layer: posteriors as peaked as a trained model's
    targets = _first_pass(base, cuts, normalizer, shift=1)
    trained = TrainedSystem(
        AM,
        {"system": system, "model": MODELS[system], "cmvn": "global"},
        base.state_dict(),
        np.zeros(23, np.float32),
        np.ones(23, np.float32) * 5.0,
        NUM_PDFS,
        np.full(NUM_PDFS, -np.log(NUM_PDFS)),
    )
    adapted, report = adapt_speakers(base, trained.feat_dim, cuts, targets, normalizer, AdaptConfig(epochs=15, lr=0.05))
    assert sorted(report["speakers"]) == ["a", "b"]
    for r in report["speakers"].values():
        assert r["frames"] > 0
        assert r["ce_after"] < 0.9 * r["ce_before"], report
    # the two speakers learnt different transforms from their own utterances
    assert not torch.allclose(adapted.lin_weight[0], adapted.lin_weight[1])
    trained.adapted(adapted.transforms_state()).save(tmp_path)
    loaded, saved = load_am(tmp_path)
    assert isinstance(loaded, SpeakerAdaptedAM)
    for cut, ll in iter_loglikes(loaded, saved, cuts, normalizer=normalizer):
        with torch.no_grad():
            expected = torch.log_softmax(adapted(torch.as_tensor(normalizer(cut))[None], [speaker_of(cut)]), -1)
        np.testing.assert_allclose(ll, expected[0].numpy() - saved.log_prior, rtol=1e-4, atol=1e-4)


def test_a_first_pass_of_other_features_is_named(yesno_fbank_cuts):
    cuts = yesno_fbank_cuts
    normalizer = FeatureNormalizer("global", np.zeros(23, np.float32), np.ones(23, np.float32))
    targets = {c.id: np.zeros(c.num_frames - 3, dtype=np.int64) for c in cuts}
    named = "|".join(re.escape(i) for i in cuts.ids)
    with pytest.raises(DataError, match=rf"({named}): the first-pass best path has \d+ frames, the features \d+"):
        adapt_speakers(_model("dnn"), 23, cuts, targets, normalizer, AdaptConfig(epochs=1))
    with pytest.raises(DataError, match="no utterance"):
        adapt_speakers(_model("dnn"), 23, cuts, {}, normalizer, AdaptConfig(epochs=1))


@pytest.mark.parametrize(
    "options, message", [({"transforms": ["fmllr"]}, "transforms"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr")]
)
def test_bad_adaptation_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        AdaptConfig(**options)
