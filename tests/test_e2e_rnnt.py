"""RNN-T (asrhybrid.e2e.rnnt): k2's full and pruned losses against a brute-force sum over every alignment,
with gradients; the ContextNet encoder's shapes; the searches."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from asrhybrid.e2e.rnnt import ContextNet, RnnTransducer, brute_force_rnnt_log_prob, modified_beam_search, rnnt_greedy
from asrhybrid.e2e.tokens import BLANK


def _k2():
    from conftest import require_k2

    return require_k2()


def _torch_brute_force(logits: torch.Tensor, labels: list[int]) -> torch.Tensor:
    """Differentiable brute force: every alignment's log-probability summed by logsumexp."""
    lp = logits.log_softmax(-1)
    T, U = lp.shape[0], len(labels)
    scores = []
    for positions in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        score = lp.new_zeros(())
        for step in range(T + U - 1):
            if step in positions:
                score = score + lp[t, u, labels[u]]
                u += 1
            else:
                score = score + lp[t, u, BLANK]
                t += 1
        scores.append(score + lp[T - 1, U, BLANK])
    return torch.logsumexp(torch.stack(scores), 0)


@pytest.mark.parametrize("T,labels", [(1, [2]), (3, [1, 2]), (4, [3, 3, 1]), (5, [2])])
def test_k2_full_rnnt_loss_and_gradient_equal_the_brute_force_sum(T, labels):
    k2 = _k2()
    torch.manual_seed(T)
    V, U = 4, len(labels)
    logits = torch.randn(T, U + 1, V, dtype=torch.float64, requires_grad=True)
    reference = -_torch_brute_force(logits, labels)
    assert float(reference.detach()) == pytest.approx(
        -brute_force_rnnt_log_prob(logits.detach().log_softmax(-1).numpy(), labels)
    )
    boundary = torch.tensor([[0, 0, U, T]])
    loss = k2.rnnt_loss(logits[None], torch.tensor([labels]), BLANK, boundary, reduction="sum")
    assert float(loss) == pytest.approx(float(reference), rel=1e-9)
    (grad,) = torch.autograd.grad(loss, logits)
    (ref_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(grad, ref_grad, atol=1e-9, rtol=1e-7)
    assert torch.autograd.gradcheck(
        lambda x: k2.rnnt_loss(x[None], torch.tensor([labels]), BLANK, boundary, reduction="sum"),
        (logits.detach().requires_grad_(),),
    )


def test_pruned_loss_over_every_label_equals_the_full_loss_and_narrower_ranges_bound_it():
    """With prune_range >= U + 1 the pruned joint covers every (frame, label) pair: the same loss and gradient
    as the full one; the smoothed simple loss supplies the ranges as in icefall."""
    k2 = _k2()
    torch.manual_seed(0)
    B, T, U, V, D = 2, 6, 3, 5, 7
    am = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    lm = torch.randn(B, U + 1, D, dtype=torch.float64, requires_grad=True)
    out = torch.nn.Linear(D, V).double()
    symbols = torch.tensor([[1, 2, 2], [3, 1, 0]])
    boundary = torch.tensor([[0, 0, 3, 6], [0, 0, 2, 5]])

    def joint(a, b):
        return out(torch.tanh(a + b))

    full = k2.rnnt_loss(joint(am[:, :, None], lm[:, None]), symbols, BLANK, boundary, reduction="sum")
    _, (px_grad, py_grad) = k2.rnnt_loss_smoothed(
        lm=lm @ torch.randn(D, V, dtype=torch.float64),
        am=am @ torch.randn(D, V, dtype=torch.float64),
        symbols=symbols,
        termination_symbol=BLANK,
        boundary=boundary,
        reduction="sum",
        return_grad=True,
    )
    ranges = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, U + 1)
    am_p, lm_p = k2.do_rnnt_pruning(am=am, lm=lm, ranges=ranges)
    pruned = k2.rnnt_loss_pruned(joint(am_p, lm_p), symbols, ranges, BLANK, boundary, reduction="sum")
    assert float(pruned) == pytest.approx(float(full), rel=1e-9)
    g_full = torch.autograd.grad(full, (am, lm), retain_graph=True)
    g_pruned = torch.autograd.grad(pruned, (am, lm))
    for a, b in zip(g_full, g_pruned):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)
    narrow = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, 2)
    am_n, lm_n = k2.do_rnnt_pruning(am=am, lm=lm, ranges=narrow)
    assert (
        float(k2.rnnt_loss_pruned(joint(am_n, lm_n), symbols, narrow, BLANK, boundary, reduction="sum"))
        >= float(full) - 1e-9
    )


def test_contextnet_downsamples_8x_and_its_excitation_ignores_padding():
    torch.manual_seed(0)
    net = ContextNet(23, channels=16, blocks=7, layers=2, kernel=5, alpha=1.0).eval()
    assert net.subsampling == 8
    feats, lens = torch.randn(2, 50, 23), torch.tensor([50, 21])
    enc, enc_lens = net(feats, lens)
    assert enc.shape == (2, 7, 16) and enc_lens.tolist() == [net.output_frames(50), net.output_frames(21)] == [7, 3]
    wide = ContextNet(23, channels=16, blocks=7, layers=2, alpha=2.0)
    assert wide.output_dim == 32 and sum(p.numel() for p in wide.parameters()) > 2 * sum(
        p.numel() for p in net.parameters()
    )


def test_rnnt_model_losses_agree_and_beam_of_one_is_greedy():
    """The model's pruned loss with a range over every label equals its full loss on the same weights;
    modified beam search with beam 1 is greedy search with one token a frame."""
    _k2()
    torch.manual_seed(0)
    model = RnnTransducer(23, 6, channels=16, blocks=4, layers=1, pred_dim=12, joint_dim=12, loss="full").eval()
    feats, lens, labels = torch.randn(2, 40, 23), torch.tensor([40, 33]), [[1, 2, 3], [4, 4]]
    full, enc_lens, _ = model.loss(feats, lens, labels)
    model.loss_kind, model.prune_range, model.simple_scale = "pruned", 10, 0.0
    pruned, _, _ = model.loss(feats, lens, labels)
    assert float(pruned) == pytest.approx(float(full), rel=1e-4)
    with torch.no_grad():
        enc, n = model.encode(feats, lens)
        assert modified_beam_search(model, enc[0, : n[0]], beam=1) == rnnt_greedy(model, enc[0, : n[0]], max_symbols=1)


def reference_beam_search(model: RnnTransducer, enc: torch.Tensor, beam: int) -> list[int]:
    """Modified beam search (one token a frame) written the plain way: every hypothesis's label-encoder output
    recomputed from its whole token prefix, every token tried, equal token sequences merged, the best ``beam``
    kept after each frame."""
    enc = model.enc_proj(enc)
    hyps: dict[tuple[int, ...], float] = {(): 0.0}
    for t in range(enc.shape[0]):
        grown: dict[tuple[int, ...], float] = {}
        for k, score in hyps.items():
            pred, _ = model.predict(torch.tensor([[BLANK, *k]]))
            log_probs = torch.log_softmax(model.joint(enc[t], model.pred_proj(pred[0, -1])).float(), dim=-1)
            for token, lp in enumerate(log_probs.tolist()):
                key = k if token == BLANK else k + (token,)
                grown[key] = float(np.logaddexp(grown.get(key, -math.inf), score + lp))
        hyps = dict(sorted(grown.items(), key=lambda kv: -kv[1])[:beam])
    return list(max(hyps, key=hyps.get))


def test_modified_beam_search_matches_a_plain_reference():
    """The search's cached, batched label-encoder steps and per-hypothesis top-k give the hypothesis of a plain
    search that recomputes everything (beam + 1 covers the whole vocabulary here, so top-k drops nothing); an
    untrained model emits a token on most frames, so hypotheses merge and reorder often."""
    torch.manual_seed(3)
    model = RnnTransducer(23, 6, channels=16, blocks=4, layers=1, pred_dim=12, joint_dim=12).eval()
    feats, lens = torch.randn(2, 240, 23), torch.tensor([240, 170])
    with torch.no_grad():
        enc, n = model.encode(feats, lens)
        for e, frames in zip(enc, n.tolist()):
            hyp = modified_beam_search(model, e[:frames], beam=5)
            assert len(hyp) > frames // 3
            assert hyp == reference_beam_search(model, e[:frames], beam=5)


def test_rnnt_ctc_head_adds_its_share_of_the_ctc_loss():
    """With ctc_scale 0.2 the loss is the transducer's plus 0.2 x the CTC head's, the latter checked against the
    CTC prefix scorer's full-sequence probabilities (asrhybrid.e2e.ctc_prefix)."""
    from asrhybrid.e2e.ctc_prefix import CtcPrefixScorer
    from asrhybrid.e2e.tokens import SOS_EOS

    _k2()
    torch.manual_seed(0)
    model = RnnTransducer(23, 6, channels=16, blocks=4, layers=1, pred_dim=12, joint_dim=12, ctc_scale=0.2)
    feats, lens, labels = torch.randn(2, 40, 23), torch.tensor([40, 33]), [[2, 3, 3], [4, 5]]
    with_ctc, enc_lens, parts = model.loss(feats, lens, labels)
    model.eval()
    with torch.no_grad():
        enc, n = model.encode(feats, lens)
        transducer = model._transducer_loss(enc, n, labels)
        ctc = 0.0
        for e, frames, y in zip(enc, n.tolist(), labels):
            scorer = CtcPrefixScorer(torch.log_softmax(model.ctc(e[:frames]), dim=-1))
            prefix = scorer.initial()
            for token in y:
                (prefix,) = scorer.extend(prefix, [token])
            ctc -= scorer.extend(prefix, [SOS_EOS])[0].score
        again, _, again_parts = model.loss(feats, lens, labels)  # eval mode too: batch norm's running statistics
    assert float(again) == pytest.approx(float(transducer) + 0.2 * ctc, rel=1e-4)
    assert set(parts) == set(model.loss_parts) == {"transducer", "ctc"}
    assert float(again_parts["ctc"]) == pytest.approx(ctc, rel=1e-4)
    assert float(again_parts["transducer"]) == pytest.approx(float(transducer), rel=1e-5)
    with_ctc.backward()
    assert model.ctc.weight.grad.abs().sum() > 0


def test_replicate_padding_hides_the_utterance_edges_from_the_encoder():
    """With replicate padding, frames repeated in front of an utterance of constant frames change nothing the
    encoder sees at the start (the edge looks like more of the same); with zero padding, they do."""
    torch.manual_seed(0)
    for padding, same in (("replicate", True), ("zeros", False)):
        torch.manual_seed(0)
        model = RnnTransducer(23, 6, channels=16, blocks=4, layers=1, pred_dim=12, joint_dim=12, padding=padding).eval()
        frame = torch.randn(1, 1, 23)
        with torch.no_grad():
            short = model.encode(frame.repeat(1, 40, 1), torch.tensor([40]))[0]
            long = model.encode(frame.repeat(1, 80, 1), torch.tensor([80]))[0]
        # the middle of the longer input is as far from both edges as the receptive field reaches
        assert torch.allclose(short[0, 0], long[0, 5], atol=1e-5) == same
    with pytest.raises(ValueError, match="padding"):
        RnnTransducer(23, 6, channels=16, blocks=4, padding="reflect")


def test_blank_penalty_is_a_lower_blank_bias_and_lengthens_the_output():
    """A blank penalty p in both searches gives what the same model with p taken from blank's output bias gives,
    and raising it lengthens the greedy output of a model that prefers blank (the remedy for a transducer that
    deletes)."""
    torch.manual_seed(5)
    model = RnnTransducer(23, 6, channels=16, blocks=4, layers=1, pred_dim=12, joint_dim=12).eval()
    with torch.no_grad():
        model.joint_out.bias[BLANK] += 4.0  # a model that prefers blank, as one that deletes does
        feats, lens = torch.randn(1, 160, 23), torch.tensor([160])
        enc, n = model.encode(feats, lens)
        enc = enc[0, : n[0]]
        with_penalty = {
            p: (rnnt_greedy(model, enc, 2, p), modified_beam_search(model, enc, 4, None, 2, p)) for p in (0, 2, 4)
        }
        model.joint_out.bias[BLANK] -= 2.0
        assert (rnnt_greedy(model, enc, 2), modified_beam_search(model, enc, 4, None, 2)) == with_penalty[2]
    lengths = [len(with_penalty[p][0]) for p in (0, 2, 4)]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
