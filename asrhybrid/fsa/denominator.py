"""LF-MMI's denominator: the log-likelihood of a batch of network outputs under a pdf-level acceptor (Kaldi's
den.fst), with Kaldi chain's leaky HMM, and its gradient (the denominator's occupation posteriors).

The leaky HMM (Povey et al. 2016, section 2.6) lets the path leave any state for any other at every frame:
after frame t's transitions each state ``d`` gets ``leaky x (sum of all states' forward scores) x
initial(d)`` more. Every pdf sequence then has a non-zero probability, which keeps the denominator finite on
chunks cut out of utterances. In vectors over the states, with M[s, d] the weight of the arc s -> d and
e_t[d] the exponentiated output of the pdf on the arcs into d:

    alpha_0 = initial
    a_t     = e_t * (M^T alpha_{t-1})
    alpha_t = a_t + leaky * initial * sum(a_t)
    total   = final . alpha_T

and backwards, with beta_T = final: b_t = beta_t + leaky * (initial . beta_t), beta_{t-1} = M (e_t * b_t);
the occupation posterior of state d at frame t is a_t[d] b_t[d] / total. As Kaldi's chain-denominator.cc
does, this runs in the probability domain with every frame's alpha rescaled to sum to one (the scales give
the log total, in double precision) and beta rescaled by the same factors, so one step is a sparse
matrix product and an elementwise product over [states, batch]: on a 12,569-state graph about 20x the speed
of a log-domain scatter over arcs. The outputs are limited to [-30, 30] (Kaldi's ApplyExpLimited: a network
whose outputs run away cannot underflow a frame to zero or overflow its gradient) and each frame's are
shifted by their maximum before the exponential.

The recursion needs the arcs into a state to share one label (then e_t is per state). A minimised
denominator graph almost is so; a state entered by several labels is split into one copy per label, the
copies sharing its outgoing arcs and its final weight, its initial mass on the first copy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from asrhybrid.fsa.fsa import DenseFsaVec, Fsa

OUTPUT_LIMIT = 30.0  # the outputs the denominator reads lie in [-30, 30], as in Kaldi's chain-denominator.cc


@dataclass
class DenominatorTopology:
    """A denominator graph prepared for the recursion: transition matrices in CSR form over its (split)
    states, each state's label, the initial and final probabilities."""

    forward: torch.Tensor  # sparse CSR [S, S]: row d, column s, the weight of s -> d (M^T)
    backward: torch.Tensor  # sparse CSR [S, S]: M
    label: torch.Tensor  # int64 [S]: the label of the arcs into each state (0 where none enters)
    initial: torch.Tensor  # [S] probabilities
    final: torch.Tensor  # [S] probabilities
    dtype: torch.dtype

    @property
    def num_states(self) -> int:
        return int(self.label.numel())

    @classmethod
    def from_graph(
        cls,
        graph: Fsa,
        initial: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        all_final: bool = False,
    ) -> "DenominatorTopology":
        """``graph``: an acceptor with emitting labels > 0, no epsilons, its last state the final one;
        ``initial``: log-probabilities over its other states (default: all mass on state 0); ``all_final``:
        every state final with probability one (Kaldi's chain denominator: a chunk may end anywhere) instead
        of the graph's final weights."""
        if bool((graph.label == 0).any()):
            raise ValueError("a denominator graph has no epsilon arcs (label 0)")
        n = graph.num_states - 1
        emitting = graph.label > 0
        src, dst, label = graph.src[emitting], graph.dst[emitting], graph.label[emitting]
        weight = torch.exp(graph.score[emitting].double())
        into_final = graph.label == -1
        final = (
            torch.ones(n, dtype=torch.float64)
            if all_final
            else torch.zeros(n, dtype=torch.float64).index_add(
                0, graph.src[into_final], torch.exp(graph.score[into_final].double())
            )
        )
        if initial is None:
            initial_prob = torch.zeros(n, dtype=torch.float64)
            initial_prob[0] = 1.0
        else:
            initial_prob = torch.exp(initial.double().cpu())

        # one copy of each state per label entering it (states nothing enters keep one copy, label 0)
        max_label = int(label.max()) + 1 if label.numel() else 1
        keys = torch.unique(torch.cat([dst * max_label + label, torch.arange(n) * max_label]))
        owner, copy_label = keys // max_label, keys % max_label
        entered = torch.zeros(n, dtype=torch.bool)
        entered[dst] = True
        keep = (copy_label > 0) | ~entered[owner]  # the label-0 copy only for states nothing enters
        owner, copy_label = owner[keep], copy_label[keep]
        num_copies = torch.bincount(owner, minlength=n)
        first_copy = torch.cumsum(num_copies, 0) - num_copies
        copy_of = {(int(o), int(lab)): i for i, (o, lab) in enumerate(zip(owner.tolist(), copy_label.tolist()))}
        arc_dst = torch.tensor([copy_of[(d, lab)] for d, lab in zip(dst.tolist(), label.tolist())], dtype=torch.int64)
        # every copy of an arc's source state has the arc
        arc_index = torch.repeat_interleave(torch.arange(src.numel()), num_copies[src])
        offset = torch.arange(arc_index.numel()) - torch.repeat_interleave(
            torch.cumsum(num_copies[src], 0) - num_copies[src], num_copies[src]
        )
        arc_src = first_copy[src[arc_index]] + offset
        arc_dst, arc_weight = arc_dst[arc_index], weight[arc_index]
        size = int(owner.numel())
        state_initial = torch.zeros(size, dtype=torch.float64)
        state_initial[first_copy] = initial_prob

        def csr(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            m = torch.sparse_coo_tensor(torch.stack([rows, cols]), arc_weight, (size, size), check_invariants=True)
            with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": what it does here is tested
                warnings.simplefilter("ignore", UserWarning)
                return m.coalesce().to_sparse_csr().to(dtype=dtype, device=device)

        return cls(
            forward=csr(arc_dst, arc_src),
            backward=csr(arc_src, arc_dst),
            label=copy_label.to(device),
            initial=state_initial.to(dtype=dtype, device=device),
            final=final[owner].to(dtype=dtype, device=device),
            dtype=dtype,
        )


def denominator_log_likelihood(
    graph: Fsa | DenominatorTopology,
    dense: DenseFsaVec,
    leaky: float = 0.0,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """The total log-likelihood [B] (float64) of each sequence of ``dense`` under ``graph`` (an Fsa, or one
    prepared once by :meth:`DenominatorTopology.from_graph`) with the leaky HMM's coefficient ``leaky`` and
    ``initial`` log-probabilities over the states of an Fsa (default: all at state 0). Differentiable with
    respect to ``dense.log_probs``; the recursion runs in their dtype (float32 or float64)."""
    if leaky < 0:
        raise ValueError(f"leaky HMM coefficient {leaky} < 0")
    x = dense.log_probs
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(graph, Fsa):
        graph = DenominatorTopology.from_graph(graph, initial, dtype, x.device)
    elif initial is not None:
        raise ValueError("initial probabilities belong to the DenominatorTopology")
    column = dense.label_to_column.to(x.device)[graph.label.to(x.device)]
    return _LeakyForwardBackward.apply(x, dense.lengths.to(x.device), graph, column, float(leaky))


class _LeakyForwardBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lengths, topo: DenominatorTopology, column, leaky):
        batch, frames = x.shape[0], x.shape[1]
        dtype = topo.dtype
        limited = x.detach().clamp(-OUTPUT_LIMIT, OUTPUT_LIMIT)
        shift = limited.amax(dim=2)  # [B, T]
        emissions = torch.exp(limited.to(dtype) - shift[:, :, None].to(dtype)).permute(1, 2, 0).contiguous()
        initial = topo.initial[:, None]
        alpha = initial.expand(-1, batch).contiguous()
        stored = torch.zeros(frames, topo.num_states, batch, dtype=dtype, device=x.device)
        scales = torch.ones(frames, batch, dtype=dtype, device=x.device)
        active = torch.arange(frames, device=x.device)[:, None] < lengths[None, :]  # [T, B]
        for t in range(frames):
            a = emissions[t].index_select(0, column) * (topo.forward @ alpha)
            scale = a.sum(dim=0)
            scale = torch.where(active[t] & (scale > 0), scale, torch.ones_like(scale))
            a = a / scale
            stored[t] = a
            scales[t] = scale
            alpha = torch.where(active[t], a + leaky * initial * a.sum(dim=0), alpha)
        end = (topo.final[:, None] * alpha).sum(dim=0)
        total = torch.where(
            active, torch.log(scales.double()) + shift.double().T, torch.zeros_like(shift.double().T)
        ).sum(dim=0) + torch.log(end.double())
        ctx.save_for_backward(emissions, stored, scales, active, column, end)
        ctx.topo, ctx.leaky, ctx.num_columns = topo, leaky, x.shape[2]
        ctx.x_dtype = x.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        emissions, stored, scales, active, column, end = ctx.saved_tensors
        topo, leaky = ctx.topo, ctx.leaky
        frames, _, batch = stored.shape
        initial = topo.initial[:, None]
        alive = end > 0  # a sequence the graph cannot produce has total -inf and no gradient
        beta = topo.final[:, None] / torch.where(alive, end, torch.ones_like(end))  # beta_T / total (scaled)
        grad = torch.zeros(frames, ctx.num_columns, batch, dtype=stored.dtype, device=stored.device)
        for t in range(frames - 1, -1, -1):
            b = beta + leaky * (initial * beta).sum(dim=0)
            occupation = stored[t] * b
            grad[t].index_add_(0, column, occupation)
            earlier = topo.backward @ (emissions[t].index_select(0, column) * b) / scales[t]
            beta = torch.where(active[t], earlier, beta)
        grad = torch.where(active[:, None, :], grad, torch.zeros_like(grad)) * alive.to(grad.dtype)
        grad = grad.permute(2, 0, 1) * grad_total.to(grad.dtype)[:, None, None]
        return grad.to(ctx.x_dtype), None, None, None, None
