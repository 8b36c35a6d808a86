"""LF-MMI's denominator: the log-likelihood of a batch of network outputs under a pdf-level acceptor (Kaldi's
den.fst), with Kaldi chain's leaky HMM.

The leaky HMM (Povey et al. 2016, section 2.6) lets the path leave any state for any other at every frame:
after frame t's transitions, each state ``d`` gets ``leaky x (sum of all states' forward scores) x
initial(d)`` more. Every pdf sequence then has a non-zero probability, which keeps the denominator finite
on chunks cut out of utterances. Forward scores here, in the log domain, in double precision:

    alpha_0(s) = initial(s)
    a_t(d)     = logsumexp over arcs s -> d with label l of  alpha_{t-1}(s) + score + x_t[column(l)]
    alpha_t(d) = logaddexp(a_t(d), log(leaky) + logsumexp_s a_t(s) + initial(d))
    total      = logsumexp_s alpha_T(s) + final(s)

where final(s) is the score of s's arc into the final state (label -1). With ``leaky = 0`` this is the
total of every path, what ``asrhybrid.fsa.get_tot_scores`` (k2's intersect_dense) gives. The derivative of
the total with respect to the outputs is the denominator's occupation posteriors; LF-MMI's gradient is the
numerator's minus these. k2's dense intersection cannot carry the leak (each of its arcs consumes a frame),
so this forward is its own; autograd does the backward.
"""

from __future__ import annotations

import math

import torch

from asrhybrid.fsa.fsa import DenseFsaVec, Fsa


def denominator_log_likelihood(
    graph: Fsa, dense: DenseFsaVec, leaky: float = 0.0, initial: torch.Tensor | None = None
) -> torch.Tensor:
    """The total log-likelihood [B] (float64) of each sequence of ``dense`` under ``graph`` (an acceptor whose
    emitting arcs have labels > 0, no epsilons; its last state the final one), with the leaky HMM's
    coefficient ``leaky`` and ``initial`` log-probabilities over the states (default: all at state 0)."""
    if leaky < 0:
        raise ValueError(f"leaky HMM coefficient {leaky} < 0")
    if bool((graph.label == 0).any()):
        raise ValueError("a denominator graph has no epsilon arcs (label 0)")
    device = dense.log_probs.device
    x = dense.log_probs.double()
    batch, frames = x.shape[0], x.shape[1]
    num_states = graph.num_states - 1  # the last state is the super-final one
    emitting = graph.label > 0
    src, dst = graph.src[emitting].to(device), graph.dst[emitting].to(device)
    score = graph.score[emitting].to(device).double()
    column = dense.label_to_column.to(device)[graph.label[emitting].to(device)]
    final = torch.full((num_states,), -math.inf, dtype=torch.float64, device=device)
    into_final = graph.label == -1
    final = final.scatter_reduce(
        0, graph.src[into_final].to(device), graph.score[into_final].to(device).double(), "amax"
    )
    if initial is None:
        initial = torch.full((num_states,), -math.inf, dtype=torch.float64, device=device)
        initial[0] = 0.0
    initial = initial.to(device).double()
    log_leaky = math.log(leaky) if leaky > 0 else None

    alpha = initial.expand(batch, num_states)
    lengths = dense.lengths.to(device)
    for t in range(frames):
        values = alpha[:, src] + score + x[:, t, column]  # [B, emitting arcs]
        a = _logsumexp_into(values, dst, num_states)
        if log_leaky is not None:
            a = _logaddexp(a, log_leaky + torch.logsumexp(a, dim=1, keepdim=True) + initial)
        alpha = torch.where((t < lengths)[:, None], a, alpha)  # a sequence's last frame is its own
    return torch.logsumexp(alpha + final, dim=1)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logaddexp`` whose gradient is 0, not NaN, where both sides are -inf (states the leak does not reach)."""
    some = torch.isfinite(a) | torch.isfinite(b)
    zero = torch.zeros_like(a)
    return torch.where(some, torch.logaddexp(torch.where(some, a, zero), torch.where(some, b, zero)), -math.inf)


def _logsumexp_into(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size]: the log-sum-exp of ``values`` [B, A] grouped by ``index`` [A] (-inf where a group is empty)."""
    batch = values.shape[0]
    shift = torch.full((batch, size), -math.inf, dtype=values.dtype, device=values.device)
    shift = shift.scatter_reduce(1, index.expand(batch, -1), values.detach(), "amax").detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    sums = torch.zeros_like(shift).index_add(1, index, torch.exp(values - shift[:, index]))
    present = sums > 0
    return torch.where(present, torch.log(torch.where(present, sums, torch.ones_like(sums))) + shift, -math.inf)
