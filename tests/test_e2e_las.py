"""LAS (asrhybrid.e2e.las): the pyramid's time reduction, attention weights, beam search against greedy,
length-normalised n-best LM rescoring; and every end-to-end system training a few steps on real yesno audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrhybrid.e2e.las import LAS, Listener, greedy_las, rescore_nbest
from asrhybrid.e2e.tokens import SOS_EOS, TokenSet
from test_e2e_ctc import YES_NO_ARPA, yes_no_tokens  # noqa: F401  (a fixture)


def test_pyramid_halves_time_three_times():
    torch.manual_seed(0)
    listener = Listener(23, hidden=16, pyramid=3)
    enc, lens = listener(torch.randn(2, 50, 23), torch.tensor([50, 21]))
    assert enc.shape == (2, 7, 32) and lens.tolist() == [7, 3] == [listener.output_frames(50), listener.output_frames(21)]


def test_attention_weights_sum_to_one_and_skip_padding():
    torch.manual_seed(0)
    model = LAS(23, 9, listener_hidden=16, pyramid=2, speller_hidden=16, embed_dim=8, attention_dim=8).eval()
    enc, enc_lens, mask = model.encode(torch.randn(2, 40, 23), torch.tensor([40, 17]))
    keys = model.attention.keys(enc)
    lp, context, state, weights = model.step(torch.tensor([SOS_EOS, SOS_EOS]), enc.new_zeros(2, enc.shape[-1]), None,
                                             enc, keys, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert float(weights[1, int(enc_lens[1]):].abs().sum()) == 0.0 and lp.shape == (2, 9)
    assert torch.isinf(lp[:, 0]).all()  # blank is never spelled


def test_beam_of_one_is_greedy_and_wider_beams_score_no_worse():
    torch.manual_seed(1)
    model = LAS(23, 9, listener_hidden=16, pyramid=2, speller_hidden=16, embed_dim=8, attention_dim=8).eval()
    with torch.no_grad():
        enc, n, _ = model.encode(torch.randn(1, 40, 23), torch.tensor([40]))
        enc = enc[0, : int(n[0])]
        one = model.beam_search(enc, beam=1)
        assert one[0][0] == greedy_las(model, enc)
        assert model.beam_search(enc, beam=4)[0][1] >= one[0][1] - 1e-5


def test_length_normalised_rescoring_flips_a_planted_ambiguity_with_kenlm(yes_no_tokens, tmp_path):  # noqa: F811
    from asrhybrid.decode.rescore import open_lm

    arpa = tmp_path / "yes_no.arpa"
    arpa.write_text(YES_NO_ARPA)
    tokens = yes_no_tokens
    no, yes = tokens.encode("NO"), tokens.encode("YES")
    nbest = [(no, -1.0 * (len(no) + 1)), (yes, -1.1 * (len(yes) + 1))]  # per token: NO -1.0, YES -1.1
    assert tokens.words(rescore_nbest(nbest, tokens.words)) == ["NO"]
    lm = open_lm(arpa, {})
    assert tokens.words(rescore_nbest(nbest, tokens.words, lm, lm_weight=0.5)) == ["YES"]
    # the length normalisation itself: a longer hypothesis with a lower total but a higher per-token score wins
    assert rescore_nbest([(yes + yes, -4.0), (no, -3.5)], tokens.words) == yes + yes


@pytest.fixture(scope="module")
def yesno_training_batch(tmp_path_factory):
    """Four real yesno files with their transcripts and fbank, the character tokens of their transcripts."""
    from conftest import require_shared
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet

    from asrhybrid.e2e.data import e2e_batches
    from asrhybrid.features.cmvn import FeatureNormalizer
    from asrhybrid.features.fbank import KaldiFbank, KaldiFbankConfig
    from asrhybrid.lm.bpe import train_tokens

    yesno = require_shared("corpora", "yesno", "waves_yesno")
    out = tmp_path_factory.mktemp("yesno_e2e")
    recordings = RecordingSet.from_recordings(list(RecordingSet.from_dir(yesno, "*.wav"))[:4])
    text = {r.id: " ".join("YES" if c == "1" else "NO" for c in r.id.split("_")) for r in recordings}
    supervisions = SupervisionSet.from_segments(SupervisionSegment(r.id, r.id, 0.0, r.duration, text=text[r.id],
                                                                   speaker="s") for r in recordings)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions).to_eager().compute_and_store_features(
        KaldiFbank(KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)), out / "feats")
    train_tokens(list(text.values()), out / "tokens", vocab_size=9, model_type="char")
    tokens = TokenSet(out / "tokens")
    normalizer = FeatureNormalizer.for_cuts("utterance", np.zeros(23), np.full(23, 3.0), cuts)
    (batch,) = [b for b in e2e_batches(cuts, tokens, normalizer, 100.0, None)]
    return batch, tokens


@pytest.mark.parametrize("system,options", [
    ("ctc", {"hidden": 64}),
    ("rnnt", {"channels": 32, "blocks": 4, "layers": 1, "pred_dim": 32, "joint_dim": 32}),
    ("las", {"listener_hidden": 32, "speller_hidden": 32, "embed_dim": 16, "attention_dim": 16}),
])
def test_each_system_trains_a_few_steps_on_yesno_with_falling_loss(yesno_training_batch, system, options):
    from conftest import require_k2

    from asrhybrid.e2e.train import _objective, build_e2e_model

    if system == "rnnt":
        require_k2()
    batch, tokens = yesno_training_batch
    torch.manual_seed(0)
    model = build_e2e_model(system, 23, len(tokens), options)
    objective = _objective(system, None)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        model.train()
        loss, stats = objective.forward(model, batch, torch.device("cpu"))
        (loss / stats["count"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()) / stats["count"])
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0] and losses[-1] < min(losses[:3]), losses
