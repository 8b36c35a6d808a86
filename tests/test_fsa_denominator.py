"""LF-MMI's denominator with the leaky HMM (asrhybrid.fsa.denominator) against brute force over every path and
leak on tiny graphs, against the FSA engines' totals (k2's intersect_dense) without a leak, and its gradient
against the brute-force occupation posteriors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asrhybrid.fsa import DenseFsaVec, Fsa, get_tot_scores
from asrhybrid.fsa.denominator import DenominatorTopology, denominator_log_likelihood

# 3 emitting states (0 start), labels 1-3 are pdfs 0-2; state 2 and state 1 are final; the super-final is 3.
ARCS = [
    (0, 0, 1, -0.4),
    (0, 1, 2, -1.2),
    (1, 1, 2, -0.3),
    (1, 2, 3, -1.5),
    (2, 0, 1, -0.7),
    (2, 2, 3, -0.2),
    (1, 3, -1, -0.5),
    (2, 3, -1, 0.0),
]


# the same states with arcs into state 1 under two labels and into state 0 under two: the recursion, which
# needs one label into each state, splits them
MIXED = [
    (0, 0, 1, -0.4),
    (0, 1, 2, -1.2),
    (1, 1, 3, -0.3),
    (1, 2, 3, -1.5),
    (2, 0, 2, -0.7),
    (2, 2, 1, -0.2),
    (1, 3, -1, -0.5),
    (2, 3, -1, 0.0),
]


def _graph(arcs=ARCS) -> Fsa:
    return Fsa.from_arcs(arcs, 4)


def _dense(log_probs: torch.Tensor, lengths: list[int]) -> DenseFsaVec:
    return DenseFsaVec(log_probs, torch.tensor(lengths), torch.tensor([0, 0, 1, 2]))  # label l -> column l - 1


def brute_force(x: torch.Tensor, length: int, leaky: float, initial: list[float], arcs=ARCS):
    """(total, posteriors [T, C]) by enumerating every arc sequence and, after each frame, every leak (to any
    state d, weight leaky x initial(d)) or none."""
    arcs32 = [
        (s, d, label, float(torch.tensor(w, dtype=torch.float32))) for s, d, label, w in arcs
    ]  # as the Fsa holds them
    emitting = [a for a in arcs32 if a[2] > 0]
    final = {s: w for s, _, label, w in arcs32 if label == -1}
    total, occupancy = 0.0, torch.zeros(length, x.shape[1], dtype=torch.float64)
    choices = [None, 0, 1, 2] if leaky > 0 else [None]
    for start in range(3):
        if initial[start] == 0.0:
            continue
        for arcs in itertools.product(emitting, repeat=length):
            for leaks in itertools.product(choices, repeat=length):
                state, weight, pdfs = start, initial[start], []
                for (src, dst, label, w), leak in zip(arcs, leaks):
                    if src != state:
                        break
                    weight *= math.exp(w + float(x[len(pdfs), label - 1]))
                    pdfs.append(label - 1)
                    state = dst if leak is None else leak
                    if leak is not None:
                        weight *= leaky * initial[leak]
                else:
                    if state in final:
                        weight *= math.exp(final[state])
                        total += weight
                        for t, p in enumerate(pdfs):
                            occupancy[t, p] += weight
    return math.log(total), occupancy / total


@pytest.mark.parametrize("arcs", [ARCS, MIXED], ids=["one-label-per-state", "split-states"])
@pytest.mark.parametrize("leaky", [0.0, 0.1, 0.5])
def test_totals_and_gradients_equal_brute_force(leaky, arcs):
    torch.manual_seed(0)
    x = (3 * torch.randn(1, 4, 3, dtype=torch.float64)).requires_grad_()  # unnormalised, as a chain network's
    initial = [0.6, 0.3, 0.1]
    total = denominator_log_likelihood(
        _graph(arcs), _dense(x, [4]), leaky, torch.tensor(initial, dtype=torch.float64).log()
    )
    expected, posteriors = brute_force(x[0].detach(), 4, leaky, initial, arcs)
    assert float(total[0].detach()) == pytest.approx(expected, abs=1e-9)
    total.sum().backward()  # d total / d x = the occupation posteriors (LF-MMI's gradient: num's minus these)
    torch.testing.assert_close(x.grad[0], posteriors, atol=1e-9, rtol=1e-9)


def test_float32_recursion_is_within_1e4_of_double_and_posteriors_sum_to_one():
    """Training runs the recursion in float32 with per-frame rescaling; over 200 frames of a batch of three
    lengths it stays within 1e-4 of float64 (totals per frame and gradients), every frame's posteriors
    summing to one."""
    torch.manual_seed(2)
    x64 = (4 * torch.randn(3, 200, 3, dtype=torch.float64)).requires_grad_()
    x32 = x64.detach().float().requires_grad_()
    lengths = [200, 150, 77]
    for x in (x64, x32):
        denominator_log_likelihood(_graph(MIXED), _dense(x, lengths), 0.1).sum().backward()
    t64 = denominator_log_likelihood(_graph(MIXED), _dense(x64, lengths), 0.1).detach()
    t32 = denominator_log_likelihood(_graph(MIXED), _dense(x32, lengths), 0.1).detach()
    torch.testing.assert_close(t32 / torch.tensor(lengths), t64 / torch.tensor(lengths), atol=1e-4, rtol=0)
    torch.testing.assert_close(x32.grad.double(), x64.grad, atol=1e-4, rtol=0)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(x64.grad[b, :n].sum(-1), torch.ones(n, dtype=torch.float64))
        assert float(x64.grad[b, n:].abs().sum()) == 0.0


def test_gradients_are_finite_where_states_are_unreachable():
    """The default initial state (all mass on state 0) leaves states at -inf for the first frame: their
    gradient is 0, not NaN, with and without a leak, in a batch of several lengths."""
    x = torch.zeros(2, 5, 3, dtype=torch.float64, requires_grad=True)
    for leaky in (0.0, 0.1):
        denominator_log_likelihood(_graph(), _dense(x, [5, 4]), leaky).sum().backward()
        assert torch.isfinite(x.grad).all()
        assert float(x.grad[1, 4].abs().sum()) == 0.0  # the shorter sequence's padding is not read
        x.grad = None


@pytest.mark.parametrize("engine", ["torch", "k2"])
def test_without_a_leak_it_is_the_engines_total_over_every_path(engine):
    if engine == "k2":
        pytest.importorskip("k2")
    torch.manual_seed(1)
    x = torch.randn(3, 6, 3).log_softmax(-1)
    dense = _dense(x, [6, 4, 5])  # different lengths in one batch
    ours = denominator_log_likelihood(_graph(), dense, 0.0)
    theirs = get_tot_scores([_graph()] * 3, dense, log_semiring=True, engine=engine)
    torch.testing.assert_close(ours.float(), theirs.float(), atol=1e-4, rtol=1e-5)
    alone = denominator_log_likelihood(_graph(), _dense(x[1:2, :4], [4]), 0.0)
    assert float(alone[0]) == pytest.approx(float(ours[1]), abs=1e-9)


def test_a_leak_gives_every_pdf_sequence_a_probability():
    """pdf 2 never follows pdf 0 in the graph: impossible without a leak (the other pdfs at -25, within the
    outputs' limit of 30), finite with one."""
    x = torch.full((1, 2, 3), -25.0, dtype=torch.float64)
    x[0, 0, 0] = x[0, 1, 2] = 0.0  # frame 0 says pdf 0, frame 1 pdf 2
    dense = _dense(x, [2])
    initial = torch.tensor([0.5, 0.3, 0.2]).log()
    plain = float(denominator_log_likelihood(_graph(), dense, 0.0, initial)[0])
    leaky = float(denominator_log_likelihood(_graph(), dense, 0.1, initial)[0])
    assert plain < -20 and leaky > -10
    with pytest.raises(ValueError, match="epsilon"):
        denominator_log_likelihood(Fsa.from_arcs([(0, 1, 0, 0.0), (1, 2, -1, 0.0)], 3), dense)


def test_runaway_outputs_are_limited_as_kaldi_does():
    """Outputs beyond [-30, 30] (a network running away) count as +-30: the total and the gradient stay finite
    in float32, and the total equals the one of the outputs clamped there."""
    torch.manual_seed(0)
    x = (torch.randn(2, 40, 3) * 1000).float().requires_grad_()
    dense = _dense(x, [40, 33])
    total = denominator_log_likelihood(_graph(), dense, 0.1, torch.tensor([0.5, 0.3, 0.2]).log())
    total.sum().backward()
    assert torch.isfinite(total).all() and torch.isfinite(x.grad).all()
    clamped = denominator_log_likelihood(
        _graph(), _dense(x.detach().clamp(-30, 30), [40, 33]), 0.1, torch.tensor([0.5, 0.3, 0.2]).log()
    )
    assert torch.allclose(total, clamped)


@pytest.mark.parametrize("arcs", [ARCS, MIXED])
def test_all_final_is_every_state_final_with_probability_one(arcs):
    """Kaldi's chain denominator lets a sequence end in any state: all_final equals the same graph with a
    final arc of probability one from every state (whose totals the tests above check by brute force)."""
    torch.manual_seed(1)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    dense = _dense(x, [6, 4])
    initial = torch.tensor([0.5, 0.3, 0.2]).log()
    every = [a for a in arcs if a[2] != -1] + [(s, 3, -1, 0.0) for s in range(3)]
    reference = DenominatorTopology.from_graph(_graph(every), initial, torch.float64)
    topology = DenominatorTopology.from_graph(_graph(arcs), initial, torch.float64, all_final=True)
    for leaky in (0.0, 0.1):
        expected = denominator_log_likelihood(reference, dense, leaky)
        assert torch.allclose(denominator_log_likelihood(topology, dense, leaky), expected)
        assert not torch.allclose(denominator_log_likelihood(_graph(arcs), dense, leaky, initial), expected)
