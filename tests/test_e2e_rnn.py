"""The padded-batch bidirectional RNN (asrhybrid.e2e.rnn) against torch's packed-sequence layer, its reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asrhybrid.e2e.rnn import bidirectional, reversed_within


def packed(module: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    seqs = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(module(seqs)[0], batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_outputs_and_gradients_equal_the_packed_layers(kind):
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu"} if kind is nn.RNN else {}
    module = kind(7, 5, batch_first=True, bidirectional=True, **extra)
    x = torch.randn(4, 23, 7, dtype=torch.float64, requires_grad=True)
    module = module.double()
    lengths = torch.tensor([23, 17, 1, 9])
    ours, theirs = bidirectional(module, x, lengths), packed(module, x, lengths)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    assert ours[1, 17:].abs().max() == 0 and ours[2, 1:].abs().max() == 0  # padding as pad_packed_sequence leaves it
    weights = torch.randn_like(ours)  # a loss that weighs every output differently
    g_ours = torch.autograd.grad((ours * weights).sum(), [x, *module.parameters()])
    g_theirs = torch.autograd.grad((theirs * weights).sum(), [x, *module.parameters()])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_sequence_is_reversed_within_its_length_only():
    order = reversed_within(torch.tensor([3, 5, 0]), 5)
    assert order.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]
    assert torch.equal(order.gather(1, order), torch.arange(5).expand(3, 5))  # its own inverse


def test_padding_does_not_reach_the_real_frames():
    torch.manual_seed(1)
    module = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(1, 10, 3)
    noisy = x.clone()
    noisy[:, 6:] = 100.0  # whatever the padding holds
    lengths = torch.tensor([6])
    torch.testing.assert_close(bidirectional(module, x, lengths), bidirectional(module, noisy, lengths))


def test_a_stacked_or_one_way_layer_is_refused():
    with pytest.raises(ValueError, match="one-layer, bidirectional"):
        bidirectional(
            nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True), torch.zeros(1, 2, 3), torch.tensor([2])
        )
    with pytest.raises(ValueError, match="one-layer, bidirectional"):
        bidirectional(nn.LSTM(3, 4, batch_first=True), torch.zeros(1, 2, 3), torch.tensor([2]))
