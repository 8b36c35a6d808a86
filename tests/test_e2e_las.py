"""LAS (asrhybrid.e2e.las): the pyramid's time reduction, attention weights, beam search against greedy,
length-normalised n-best LM rescoring; and every end-to-end system training a few steps on real yesno audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_e2e_ctc import YES_NO_ARPA, yes_no_tokens  # noqa: F401  (a fixture)

from asrhybrid.e2e.las import LAS, Listener, _ended, greedy_las, rescore_nbest
from asrhybrid.e2e.tokens import SOS_EOS, TokenSet


def test_pyramid_halves_time_three_times():
    torch.manual_seed(0)
    listener = Listener(23, hidden=16, pyramid=3)
    enc, lens = listener(torch.randn(2, 50, 23), torch.tensor([50, 21]))
    assert enc.shape == (2, 7, 32) and lens.tolist() == [7, 3] == [
        listener.output_frames(50),
        listener.output_frames(21),
    ]


@pytest.mark.parametrize("stack, pyramid", [(1, 3), (2, 2)])
def test_stacked_input_frames_keep_the_output_rate_and_each_sequence_its_own(stack, pyramid):
    """stack 2 with two pyramid layers reduces time 8x like the paper's three; a sequence's encodings are the same
    alone and in a batch beside a longer one (an odd last frame is paired with itself, not with padding)."""
    torch.manual_seed(0)
    listener = Listener(23, hidden=16, pyramid=pyramid, stack=stack).eval()
    feats = torch.randn(2, 51, 23)
    with torch.no_grad():
        enc, lens = listener(feats, torch.tensor([51, 21]))
        alone, alone_lens = listener(feats[1:, :21], torch.tensor([21]))
    assert lens.tolist() == [listener.output_frames(51), listener.output_frames(21)] == [7, 3]
    assert enc.shape == (2, 7, 32) and alone_lens.tolist() == [3]
    torch.testing.assert_close(enc[1, :3], alone[0])


def test_attention_weights_sum_to_one_and_skip_padding():
    torch.manual_seed(0)
    model = LAS(23, 9, listener_hidden=16, pyramid=2, speller_hidden=16, embed_dim=8, attention_dim=8).eval()
    enc, enc_lens, mask = model.encode(torch.randn(2, 40, 23), torch.tensor([40, 17]))
    keys = model.attention.keys(enc)
    lp, context, state, weights = model.step(
        torch.tensor([SOS_EOS, SOS_EOS]), enc.new_zeros(2, enc.shape[-1]), None, enc, keys, mask
    )
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert float(weights[1, int(enc_lens[1]) :].abs().sum()) == 0.0 and lp.shape == (2, 9)
    assert torch.isinf(lp[:, 0]).all()  # blank is never spelled


def test_speller_steps_equal_the_speller_module_over_the_sequence():
    """The speller's per-step cells (torch.lstm_cell on the module's weights) give the outputs, states and weight
    gradients of the nn.LSTM module run over the whole input sequence."""
    torch.manual_seed(2)
    model = LAS(23, 9, listener_hidden=16, pyramid=2, speller_hidden=16, embed_dim=8, attention_dim=8)
    x = torch.randn(3, 6, 8 + 32)
    whole, (h, c) = model.speller(x)
    state, steps = None, []
    for u in range(x.shape[1]):
        out, state = model._speller_step(x[:, u], state)
        steps.append(out)
    stepped = torch.stack(steps, dim=1)
    torch.testing.assert_close(stepped, whole)
    torch.testing.assert_close(state[0], h)
    torch.testing.assert_close(state[1], c)
    grads = [torch.autograd.grad(y.square().sum(), list(model.speller.parameters())) for y in (whole, stepped)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


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
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(r.id, r.id, 0.0, r.duration, text=text[r.id], speaker="s") for r in recordings
    )
    cuts = (
        CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
        .to_eager()
        .compute_and_store_features(KaldiFbank(KaldiFbankConfig(sampling_rate=8000, num_mel_bins=23)), out / "feats")
    )
    train_tokens(list(text.values()), out / "tokens", vocab_size=9, model_type="char")
    tokens = TokenSet(out / "tokens")
    normalizer = FeatureNormalizer.for_cuts("utterance", np.zeros(23), np.full(23, 3.0), cuts)
    (batch,) = [b for b in e2e_batches(cuts, tokens, normalizer, 100.0, None)]
    return batch, tokens, cuts, normalizer


@pytest.mark.parametrize(
    "system,options",
    [
        ("ctc", {"hidden": 64}),
        ("rnnt", {"channels": 32, "blocks": 4, "layers": 1, "pred_dim": 32, "joint_dim": 32}),
        ("las", {"listener_hidden": 32, "speller_hidden": 32, "embed_dim": 16, "attention_dim": 16, "ctc_weight": 0.0}),
        ("rnnt", {"channels": 32, "blocks": 4, "layers": 1, "pred_dim": 32, "joint_dim": 32, "ctc_scale": 0.2}),
        (
            "las",
            {
                "listener_hidden": 32,
                "speller_hidden": 32,
                "embed_dim": 16,
                "attention_dim": 16,
                "ctc_weight": 0.3,
                "attention": "location",
                "label_smoothing": 0.1,
            },
        ),
    ],
)
def test_each_system_trains_a_few_steps_on_yesno_with_falling_loss(yesno_training_batch, system, options):
    """The loss falls, and for a system with a CTC head, each of its terms (reported apart) falls too."""
    from conftest import require_k2

    from asrhybrid.e2e.train import _objective, build_e2e_model

    if system == "rnnt":
        require_k2()
    batch, tokens, *_ = yesno_training_batch
    torch.manual_seed(0)
    model = build_e2e_model(system, 23, len(tokens), options)
    objective = _objective(system, None, getattr(model, "loss_parts", ()))
    heads = options.get("ctc_weight", 0.3) if system == "las" else options.get("ctc_scale", 0.0)  # the defaults
    assert len(objective.loss_parts) == (2 if heads else 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    curves: dict[str, list[float]] = {}
    for _ in range(12):
        model.train()
        loss, stats = objective.forward(model, batch, torch.device("cpu"))
        (loss / stats["count"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        for name in ("loss", *objective.loss_parts):
            curves.setdefault(name, []).append(
                (float(loss.detach()) if name == "loss" else stats[name]) / stats["count"]
            )
    for name, losses in curves.items():  # the total by 10% or more, each term by 5% (LAS's attention term: 8.7%)
        fall = 0.9 if name == "loss" else 0.95
        assert np.isfinite(losses).all() and losses[-1] < fall * losses[0] and losses[-1] < min(losses[:3]), (
            name,
            losses,
        )


def test_location_aware_attention_reads_the_previous_weights_and_skips_padding():
    torch.manual_seed(0)
    model = LAS(
        23, 9, listener_hidden=16, pyramid=2, speller_hidden=16, embed_dim=8, attention_dim=8, attention="location"
    ).eval()
    with torch.no_grad():
        enc, enc_lens, mask = model.encode(torch.randn(2, 40, 23), torch.tensor([40, 17]))
        keys, start = model.attention.keys(enc), torch.tensor([SOS_EOS, SOS_EOS])
        _, _, _, first = model.step(start, enc.new_zeros(2, enc.shape[-1]), None, enc, keys, mask)
        torch.testing.assert_close(first.sum(-1), torch.ones(2))
        assert float(first[1, int(enc_lens[1]) :].abs().sum()) == 0.0
        peaked = torch.zeros_like(first)
        peaked[:, 0] = 1.0
        _, _, _, moved = model.step(start, enc.new_zeros(2, enc.shape[-1]), None, enc, keys, mask, peaked)
        assert not torch.allclose(moved, first)  # the same state, other previous weights: other weights
        one = model.beam_search(enc[0, : int(enc_lens[0])], beam=1)
        assert one[0][0] == greedy_las(model, enc[0, : int(enc_lens[0])])


def test_joint_beam_search_finds_the_best_joint_score_of_every_sequence():
    """A wide beam over a tiny model (3 word tokens, 4 listener frames: CTC allows up to 4 tokens) finds the
    sequence maximising (1 - lambda) log p_att(y <eos>) + lambda log p_ctc(y) over every sequence the search can
    finish (up to 3 tokens), each scored here directly: the speller step by step, CTC through torch's loss."""
    import itertools

    torch.manual_seed(4)
    V, lam = 5, 0.4
    model = LAS(
        23, V, listener_hidden=8, pyramid=2, speller_hidden=8, embed_dim=4, attention_dim=4, ctc_weight=lam
    ).eval()
    with torch.no_grad():
        enc, n, _ = model.encode(torch.randn(1, 16, 23), torch.tensor([16]))
        enc = enc[0, : int(n[0])]
        assert enc.shape[0] == 4
        ctc_lp = model.ctc_log_probs(enc[None])[0]

        def joint(y: tuple[int, ...]) -> float:
            e, mask = enc[None], torch.ones(1, enc.shape[0], dtype=torch.bool)
            keys, context, state, weights, att = model.attention.keys(e), e.new_zeros(1, e.shape[-1]), None, None, 0.0
            for prev, token in zip((SOS_EOS,) + y, y + (SOS_EOS,)):
                lp, context, state, weights = model.step(torch.tensor([prev]), context, state, e, keys, mask, weights)
                att += float(lp[0, token])
            if not y:
                ctc = float(ctc_lp[:, 0].sum())
            else:
                ctc = -float(
                    torch.nn.functional.ctc_loss(
                        ctc_lp[:, None].double(),
                        torch.tensor([y]),
                        torch.tensor([4]),
                        torch.tensor([len(y)]),
                        blank=0,
                        reduction="sum",
                    )
                )
            return (1 - lam) * att + lam * ctc

        every = {y: joint(y) for k in range(4) for y in itertools.product(range(2, V), repeat=k)}
        best = max(every, key=every.get)
        found = model.beam_search(enc, beam=27, ctc_weight=lam)
        assert tuple(found[0][0]) == best and found[0][1] == pytest.approx(every[best], abs=1e-4)
        assert model.beam_search(enc, beam=27, nbest=3, ctc_weight=lam)[2][1] == pytest.approx(
            sorted(every.values())[-3], abs=1e-4
        )


def test_las_with_a_ctc_head_and_label_smoothing_trains_both_heads():
    torch.manual_seed(0)
    model = LAS(
        23,
        9,
        listener_hidden=16,
        pyramid=2,
        speller_hidden=16,
        embed_dim=8,
        attention_dim=8,
        ctc_weight=0.3,
        label_smoothing=0.1,
        attention="location",
    )
    loss, count, parts = model.loss(torch.randn(2, 40, 23), torch.tensor([40, 30]), [[3, 4, 4], [5]])
    assert count == 6 and torch.isfinite(loss)
    assert model.loss_parts == ("att", "ctc")
    assert float(loss) == pytest.approx(0.7 * float(parts["att"]) + 0.3 * float(parts["ctc"]), rel=1e-6)
    loss.backward()
    assert model.ctc.weight.grad.abs().sum() > 0 and model.output[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ctc_weight"):
        LAS(23, 9, ctc_weight=1.0)
    with pytest.raises(ValueError, match="attention"):
        LAS(23, 9, attention="additive")


def test_end_detection_needs_every_recent_length_far_below_the_best():
    far = -30.0  # below the best by more than 10 ln 10 (23.03)
    finished = [([2], -1.0), ([2, 3, 3], far), ([2, 3, 3, 3], far), ([2, 3, 3, 3, 3], far)]
    assert _ended(finished, length=6, best=-1.0)  # lengths 6, 5, 4 (tokens + <eos>) all far below
    assert not _ended(finished[:-1], length=6, best=-1.0)  # nothing ended at length 6
    assert not _ended(finished[:-1] + [([2, 3, 3, 3, 3], -20.0)], length=6, best=-1.0)  # one near enough


def test_sortagrad_gives_the_batches_shortest_first(yesno_training_batch):
    from asrhybrid.e2e.data import e2e_batches

    _, tokens, cuts, normalizer = yesno_training_batch
    generator = torch.Generator().manual_seed(0)
    batches = list(e2e_batches(cuts, tokens, normalizer, 13.0, generator, by_duration=True))
    durations = [d for b in batches for d in b.durations]
    assert len(batches) > 1 and len(durations) == 4 and durations == sorted(durations)
    assert len({d for d in durations}) > 1  # the order says something


def test_attention_images_show_each_greedy_step_over_the_listener_frames(yesno_training_batch, tmp_path):
    """After an epoch, LAS's objective draws the attention weights of the first held-out utterances: one row a
    greedy step, each row a distribution over the listener's frames."""
    from PIL import Image

    from asrhybrid.e2e.data import e2e_batches
    from asrhybrid.e2e.las import greedy_las
    from asrhybrid.e2e.train import _objective

    batch, tokens, cuts, normalizer = yesno_training_batch
    torch.manual_seed(0)
    model = LAS(
        23,
        len(tokens),
        listener_hidden=16,
        speller_hidden=16,
        embed_dim=8,
        attention_dim=8,
        attention="location",
        ctc_weight=0.3,
    )

    def batches(cuts, generator, rank, world, epoch=0):
        return e2e_batches(cuts, tokens, normalizer, 100.0, generator, rank=rank, world=world)

    objective = _objective("las", batches, model.loss_parts)
    png = objective.plot_epoch(model, cuts, tmp_path, 3, torch.device("cpu"), utterances=2)
    assert png == tmp_path / "attention" / "epoch-3.png"
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 2 * image.height
    enc, enc_lens, _ = model.encode(batch.feats, batch.feat_lens)
    steps: list[torch.Tensor] = []
    hyp = greedy_las(model, enc[0, : int(enc_lens[0])], steps)
    assert len(steps) == len(hyp) + 1 or len(hyp) == int(model.max_output_ratio * int(enc_lens[0])) + 5
    weights = torch.stack(steps)
    assert weights.shape[1] == int(enc_lens[0]) and torch.allclose(weights.sum(1), torch.ones(len(steps)), atol=1e-5)


def test_a_las_trained_before_the_joint_default_loads_as_the_papers(tmp_path):
    """final.pt of a LAS trained when the default was ctc_weight 0 (its options do not name it, its weights have no
    CTC head) loads as that model; one trained with the default CTC head loads with it."""
    from dataclasses import asdict

    import numpy as np

    from asrhybrid.e2e.train import E2EConfig, load_e2e

    small = {"listener_hidden": 8, "pyramid": 2, "speller_hidden": 8, "embed_dim": 4, "attention_dim": 4}
    for weight, head in ((0.0, False), (0.3, True)):
        model = LAS(23, 9, ctc_weight=weight, **small)
        exp = tmp_path / str(weight)
        exp.mkdir()
        torch.save(
            {
                "model": model.state_dict(),
                "config": asdict(E2EConfig(system="las", model=small)),
                "num_tokens": 9,
                "feat_mean": np.zeros(23),
                "feat_std": np.ones(23),
            },
            exp / "final.pt",
        )
        loaded, _ = load_e2e(exp)
        assert (loaded.ctc is not None) == head and loaded.ctc_weight == weight
