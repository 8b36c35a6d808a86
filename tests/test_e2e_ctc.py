"""The CTC branch (asrhybrid.e2e): searches against exhaustive enumeration, KenLM fusion, the CTC loss
against k2's and a forward pass of our own, the Deep Speech model, the training checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrhybrid.e2e.search import FlashlightDecoder, WordFusion, ctc_log_prob, exhaustive_search, prefix_beam_search
from asrhybrid.e2e.tokens import BLANK, TokenSet
from asrhybrid.lm.bpe import train_tokens

YES_NO_ARPA = (
    "\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n-99\t<s>\t-0.3\n-0.2\t</s>\n-3.0\t<unk>\n"
    "-0.05\tYES\t-0.3\n-1.0\tNO\t-0.3\n\n\\2-grams:\n-0.05\t<s> YES\n-1.2\t<s> NO\n\n\\end\\\n"
)


@pytest.fixture(scope="module")
def yes_no_tokens(tmp_path_factory) -> TokenSet:
    """A real SentencePiece character model of yesno-like transcripts: <blk> <sos/eos> <unk> ▁ and letters."""
    out = tmp_path_factory.mktemp("tokens")
    train_tokens(["YES NO", "NO NO YES", "YES YES NO"], out, vocab_size=9, model_type="char")
    return TokenSet(out)


@pytest.fixture
def yes_no_lm(tmp_path):
    from asrhybrid.decode.rescore import open_lm

    path = tmp_path / "yes_no.arpa"
    path.write_text(YES_NO_ARPA)
    return path, open_lm(path, {})


def _random_log_probs(rng, T, V, sharpness=2.0):
    x = rng.normal(size=(T, V)) * sharpness
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def test_tokens_follow_icefalls_layout_and_spell_words(yes_no_tokens):
    t = yes_no_tokens
    assert t.pieces[:3] == ["<blk>", "<sos/eos>", "<unk>"] and BLANK == 0
    assert t.words(t.encode("YES NO")) == ["YES", "NO"]
    assert t.starts_word[t.spell("NO")[0]] and t.unknown_characters("YES MAYBE") == {"M", "A", "B"}


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_search_without_lm_equals_exhaustive_search(yes_no_tokens, seed):
    """alpha = beta = 0: the best token sequence by summed CTC probability; 4 random 4-frame inputs over 5
    tokens of the real token set (625 alignments each)."""
    rng = np.random.default_rng(seed)
    V = 5
    lp = _random_log_probs(rng, 4, V)
    tokens = yes_no_tokens
    fusion = WordFusion(tokens)
    best, score = exhaustive_search(lp, fusion)
    found = prefix_beam_search(lp, fusion, beam=1000, token_beam=1e9)
    assert found[0][0] == best and found[0][1] == pytest.approx(score, abs=1e-9)
    assert score == pytest.approx(ctc_log_prob(lp, best), abs=1e-9)
    narrow = prefix_beam_search(lp, fusion, beam=4)  # a small beam still ranks what it keeps by the same score
    assert narrow[0][1] <= score + 1e-9


def _ambiguous_yes_no(tokens: TokenSet) -> np.ndarray:
    """Four frames whose acoustics prefer "▁ N O <blk>" (NO) to "▁ Y E S" (YES), 0.55 against 0.45 a frame."""
    V = len(tokens)
    (space,) = tokens.spell("NO")[:1] if tokens.pieces[tokens.spell("NO")[0]] == "\u2581" else [None]
    if space is None:  # the model folds ▁ into the first letter: not this token set
        pytest.skip("token set without a separate ▁")
    probs = np.full((4, V), 1e-4)
    probs[0, space] = 1
    for frame, (a, b) in enumerate((("N", "Y"), ("O", "E"), ("<blk>", "S")), start=1):
        probs[frame, tokens.pieces.index(a)] = 0.55
        probs[frame, tokens.pieces.index(b)] = 0.45
    return np.log(probs / probs.sum(1, keepdims=True))


def test_kenlm_fusion_flips_a_planted_ambiguity_and_matches_exhaustive_search(yes_no_tokens, yes_no_lm):
    tokens, (_path, lm) = yes_no_tokens, yes_no_lm
    lp = _ambiguous_yes_no(tokens)
    plain = prefix_beam_search(lp, WordFusion(tokens, lm, alpha=0.0), beam=64)
    assert tokens.words(list(plain[0][0])) == ["NO"]
    fused = WordFusion(tokens, lm, alpha=1.0, beta=0.5)
    found = prefix_beam_search(lp, fused, beam=64)
    assert tokens.words(list(found[0][0])) == ["YES"]
    best, score = exhaustive_search(lp, WordFusion(tokens, lm, alpha=1.0, beta=0.5))
    assert found[0][0] == best and found[0][1] == pytest.approx(score, abs=1e-6)
    # Q = log P_ctc + alpha ln P(<s> YES </s>) + beta: log10 P = -0.05 + (-0.3 back-off - 0.2) as KenLM gives
    assert score == pytest.approx(ctc_log_prob(lp, best) + (-0.05 - 0.3 - 0.2) * math.log(10) + 0.5, abs=1e-4)


def test_flashlight_lexicon_decoder_agrees_on_the_planted_ambiguity(yes_no_tokens, yes_no_lm):
    tokens, (path, _) = yes_no_tokens, yes_no_lm
    lp = _ambiguous_yes_no(tokens)
    assert FlashlightDecoder(tokens, path, ["YES", "NO"], alpha=0.0, beta=0.0)(lp) == ["NO"]
    assert FlashlightDecoder(tokens, path, ["YES", "NO"], alpha=1.0, beta=0.5)(lp) == ["YES"]


def test_ctc_loss_equals_k2_and_the_forward_algorithm_with_gradients():
    """torch's CTC loss (what training uses) against our forward algorithm and k2.ctc_loss on random inputs;
    its gradient against k2's."""
    from conftest import require_k2

    k2 = require_k2()
    rng = np.random.default_rng(0)
    T, V, labels = 7, 5, [1, 3, 3, 2]
    logits = torch.tensor(rng.normal(size=(T, V)) * 2, dtype=torch.float32, requires_grad=True)
    lp = logits.log_softmax(-1)
    ours = -ctc_log_prob(lp.detach().double().numpy(), tuple(labels))
    torch_loss = torch.nn.functional.ctc_loss(
        lp[:, None],
        torch.tensor([labels]),
        torch.tensor([T]),
        torch.tensor([len(labels)]),
        blank=BLANK,
        reduction="sum",
    )
    assert float(torch_loss) == pytest.approx(ours, rel=1e-5)
    (torch_grad,) = torch.autograd.grad(torch_loss, logits)  # through log-softmax, as in training
    logits2 = logits.detach().clone().requires_grad_(True)
    lp2 = logits2.log_softmax(-1)
    graph = k2.ctc_graph([labels], modified=False)
    dense = k2.DenseFsaVec(lp2[None], torch.tensor([[0, 0, T]], dtype=torch.int32))
    k2_loss = k2.ctc_loss(graph, dense, output_beam=1e9, reduction="sum", use_double_scores=True)
    assert float(k2_loss) == pytest.approx(ours, rel=1e-5)
    (k2_grad,) = torch.autograd.grad(k2_loss, logits2)
    torch.testing.assert_close(torch_grad, k2_grad, atol=1e-5, rtol=1e-4)


def test_deep_speech_strides_clips_and_sums_its_two_directions():
    from asrhybrid.e2e.ctc import DeepSpeech, greedy_ctc

    torch.manual_seed(0)
    model = DeepSpeech(23, 9, hidden=32, context=3, stride=2, rnn="rnn", dropout=0.0).eval()
    feats, lens = torch.randn(2, 11, 23) * 50, torch.tensor([11, 6])
    feats[1, 6:] = feats[1, 5]  # padding repeats the last frame, as the batches do
    out, out_lens = model(feats, lens)
    assert out.shape == (2, 6, 9) and out_lens.tolist() == [6, 3] and model.output_frames(11) == 6
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 6))
    hidden = model.front(torch.randn(4, 23 * 7) * 100)
    assert float(hidden.min()) >= 0 and float(hidden.max()) <= 20
    # utterance 2 alone (unpadded) scores as it does in the padded batch: the backward direction starts at its end
    alone, _ = model(feats[1:, :6], lens[1:])
    torch.testing.assert_close(alone[0], out[1, :3], atol=1e-5, rtol=1e-4)
    assert greedy_ctc(
        torch.log(torch.tensor([[0.1, 0.9, 0], [0.1, 0.9, 0], [0.9, 0.1, 0], [0.1, 0.9, 0]]) + 1e-9), 4
    ) == [1, 1]


def test_deep_speech_layer_norm_keeps_units_off_the_clip_when_weights_grow():
    """norm=layer: each non-recurrent layer normalised before its clipped ReLU. With weights 10x their initial
    scale (as training on synth grew them) most units sit at 0 or at the clip of 20 without it, where no
    gradient passes; with it as many pass as at the start."""
    from asrhybrid.e2e.ctc import DeepSpeech

    x = torch.randn(256, 23 * 7)
    inside = {}
    for norm in ("none", "layer"):
        torch.manual_seed(0)
        model = DeepSpeech(23, 9, hidden=64, context=3, rnn="none", dropout=0.0, norm=norm).eval()
        with torch.no_grad():
            for layer in model.front:
                if isinstance(layer, torch.nn.Linear):
                    layer.weight *= 10
            h = model.front(x)
        inside[norm] = float(((h > 0) & (h < 20)).float().mean())
    assert inside["layer"] > 0.4 and inside["none"] < 0.2, inside  # measured: 0.50 and 0.11
    with pytest.raises(ValueError, match="norm 'batch'"):
        DeepSpeech(23, 9, norm="batch")


def test_training_check_counts_empty_unknown_and_too_short_utterances(yes_no_tokens):
    from lhotse import MonoCut, SupervisionSegment
    from lhotse.features import Features

    from asrhybrid.e2e.data import TrainingCheck, ctc_frames_needed

    def cut(i, text, frames):
        feats = Features(
            type="kaldi-fbank",
            num_frames=frames,
            num_features=23,
            frame_shift=0.01,
            sampling_rate=8000,
            start=0,
            duration=frames / 100,
            storage_type="lilcom_chunky",
            storage_path="none",
            storage_key="0",
        )
        return MonoCut(
            f"u{i}",
            0,
            frames / 100,
            0,
            features=feats,
            supervisions=[SupervisionSegment(f"u{i}", f"r{i}", 0, frames / 100, text=text)],
        )

    assert ctc_frames_needed([3, 4, 4, 5]) == 5
    check = TrainingCheck(yes_no_tokens, output_frames=lambda n: (n + 1) // 2)
    cuts = [
        cut(0, "YES NO", 100),
        cut(1, "", 100),
        cut(2, "YES MAYBE", 100),
        cut(3, "YES NO YES", 10),
        cut(4, "NO", 100),
    ]
    assert check.survey(cuts) == 2
    assert dict(check.counts) == {
        "empty transcript": 1,
        "characters outside the token set": 1,
        "shorter than its labels": 1,
    }
    assert "u3" in check.examples["shorter than its labels"]
    assert check.too_short_for_head == 0  # a Deep Speech model has no auxiliary head

    # a joint LAS at 8x (three pyramid layers): attention trains on every utterance with a transcript, and the
    # CTC head's too-short ones are counted, kept and named, not left out
    joint = TrainingCheck(yes_no_tokens, lambda n: (n + 7) // 8, lambda ids: 0, head_frames_needed=ctc_frames_needed)
    assert joint.survey([cut(0, "YES NO", 100), cut(3, "YES NO YES", 40), cut(4, "NO", 100)]) == 3
    assert joint.too_short_for_head == 1 and joint.head_example.startswith("u3: 5 output frames")
    assert not joint.counts
