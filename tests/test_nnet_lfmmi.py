"""The LF-MMI objective (asrhybrid.nnet.lfmmi): its gradient is the numerator's occupation posteriors minus the
denominator's (both by brute force over every path, the denominator with the leaky HMM), and a few steps on a
planted problem raise the right pdf sequence's share of the denominator."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_fsa_denominator import _dense, _graph, brute_force

from asrhybrid.fsa import Fsa
from asrhybrid.fsa.denominator import denominator_log_likelihood
from asrhybrid.nnet.lfmmi import lfmmi_objective

# the numerator of a transcript whose pdfs are 0 then 1 (a self-loop each), as a training graph is
NUM = [(0, 0, 1, 0.0), (0, 1, 2, 0.0), (1, 1, 2, 0.0), (1, 2, -1, 0.0)]


def numerator_posteriors(x: torch.Tensor) -> torch.Tensor:
    """[T, C]: occupation of each pdf at each frame over every path of NUM (brute force)."""
    frames, occupancy, total = x.shape[0], torch.zeros(x.shape, dtype=torch.float64), 0.0
    emitting = [a for a in NUM if a[2] > 0]
    for arcs in itertools.product(emitting, repeat=frames):
        state, weight = 0, 1.0
        for t, (src, dst, label, w) in enumerate(arcs):
            if src != state:
                break
            weight *= math.exp(w + float(x[t, label - 1]))
            state = dst
        else:
            if state == 1:  # NUM's final state
                total += weight
                for t, (_, _, label, _) in enumerate(arcs):
                    occupancy[t, label - 1] += weight
    return occupancy / total


@pytest.mark.parametrize("engine", ["torch", "k2"])
def test_the_gradient_is_numerator_minus_denominator_posteriors(engine):
    if engine == "k2":
        pytest.importorskip("k2")
    torch.manual_seed(2)
    x = torch.randn(1, 4, 3, dtype=torch.float64).requires_grad_()
    initial = [0.6, 0.3, 0.1]
    result = lfmmi_objective(
        _dense(x, [4]), [Fsa.from_arcs(NUM, 3)], _graph(), 0.1, torch.tensor(initial, dtype=torch.float64).log(), engine
    )
    result.objective.sum().backward()
    _, den = brute_force(x[0].detach(), 4, 0.1, initial)
    expected = numerator_posteriors(x[0].detach()) - den
    torch.testing.assert_close(x.grad[0], expected, atol=1e-4, rtol=0)
    assert float(result.objective[0].detach()) == pytest.approx(
        float(result.numerator[0].detach() - result.denominator[0].detach())
    )


def test_a_few_steps_raise_the_numerators_share_of_the_denominator():
    """Outputs trained by LF-MMI alone (5 SGD steps from zeros): the objective rises at every step, and the
    denominator's occupation of pdf 2, which the numerator never uses, falls at every step."""
    x = torch.zeros(2, 5, 3, dtype=torch.float64, requires_grad=True)
    num = [Fsa.from_arcs(NUM, 3)] * 2
    optimizer = torch.optim.SGD([x], lr=0.5)
    objectives, unused = [], []
    for _ in range(5):
        probe = x.detach().clone().requires_grad_()
        denominator_log_likelihood(_graph(), _dense(probe, [5, 4]), 0.1).sum().backward()
        unused.append(float(probe.grad[..., 2].sum()))  # d den / d x: the denominator's occupation posteriors
        result = lfmmi_objective(_dense(x, [5, 4]), num, _graph(), 0.1, engine="torch")
        objectives.append(float(result.objective.sum().detach()))
        optimizer.zero_grad()
        (-result.objective.sum()).backward()
        optimizer.step()
    assert all(b > a for a, b in zip(objectives, objectives[1:])), objectives
    assert all(b < a for a, b in zip(unused, unused[1:])) and unused[-1] < 0.5 * unused[0], unused
