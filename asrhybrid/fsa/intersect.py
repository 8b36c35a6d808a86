"""Frame-synchronous intersection of an FsaVec with a DenseFsaVec (k2's intersect_dense).

One step per frame for the whole batch: every emitting arc (label > 0)
proposes ``alpha[src] + score + log_probs[b, t, column(label)]`` to its
destination, reduced by max (Viterbi) or log-sum-exp (forward); then epsilon
arcs (label 0) are followed within the frame, level by level in topological
order of the epsilon subgraph (which must be acyclic, as in Kaldi's graphs).
FSA ``b`` stops at ``lengths[b]`` frames: its states are frozen afterwards and
its final-arc scores are read there. Runs on whatever device the tensors are on.

The backward pass mirrors the forward one (epsilon levels in reverse), giving
state and arc occupation posteriors; ``get_tot_scores`` wraps forward and
backward in an autograd Function whose gradient wrt ``log_probs`` is the
posterior occupation of each (utterance, frame, column), so an FSA objective
(CTC, MMI-style) can train a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asrhybrid.fsa.fsa import DenseFsaVec, FsaVec

NEG_INF = float("-inf")


@dataclass
class _Plan:
    """Index tensors of one FsaVec, split by arc kind, computed once."""

    emit: torch.Tensor  # arc ids with label > 0
    emit_column: torch.Tensor
    eps_levels: list[torch.Tensor]  # arc ids of epsilon arcs, grouped by the depth of their source
    final: torch.Tensor  # arc ids with label -1
    state_fsa: torch.Tensor


def _epsilon_levels(fsas: FsaVec, eps: np.ndarray) -> list[np.ndarray]:
    """Group epsilon arcs by the epsilon-depth of their source (Kahn's algorithm); refuses cycles."""
    src = fsas.src.cpu().numpy()[eps]
    dst = fsas.dst.cpu().numpy()[eps]
    depth = np.zeros(fsas.num_states, dtype=np.int64)
    indegree = np.bincount(dst, minlength=fsas.num_states)
    out_arcs: dict[int, list[int]] = {}
    for k, s in enumerate(src):
        out_arcs.setdefault(int(s), []).append(k)
    ready = [s for s in set(src.tolist()) if indegree[s] == 0]
    visited = 0
    while ready:
        s = ready.pop()
        for k in out_arcs.get(s, []):
            visited += 1
            d = int(dst[k])
            depth[d] = max(depth[d], depth[s] + 1)
            indegree[d] -= 1
            if indegree[d] == 0 and d in out_arcs:
                ready.append(d)
    if visited != len(eps):
        raise ValueError("the FSA has an epsilon cycle; remove epsilons first (kaldifst.rmepsilon)")
    arc_depth = depth[src]
    return [eps[arc_depth == level] for level in range(int(arc_depth.max()) + 1)] if len(eps) else []


def plan(fsas: FsaVec, label_to_column: torch.Tensor) -> _Plan:
    label = fsas.label.cpu().numpy()
    emit = np.nonzero(label > 0)[0]
    eps = np.nonzero(label == 0)[0]
    final = np.nonzero(label == -1)[0]
    device = fsas.device
    to = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    emit_t = to(emit)
    return _Plan(
        emit=emit_t,
        emit_column=label_to_column.to(device)[fsas.label[emit_t]],
        eps_levels=[to(level) for level in _epsilon_levels(fsas, eps)],
        final=to(final),
        state_fsa=fsas.state_fsa(),
    )


def _scatter_lse(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """log-sum-exp of ``values`` grouped by ``index`` into ``size`` slots (-inf where empty)."""
    m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    total = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(0, index, torch.exp(values - safe[index]))
    return torch.where(total > 0, safe + torch.log(total), torch.full_like(m, NEG_INF))


def _scatter_max(values: torch.Tensor, index: torch.Tensor, arc_ids: torch.Tensor, size: int):
    """(max of ``values`` per slot, the smallest arc id attaining it or -1)."""
    best = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    wins = (values == best[index]) & torch.isfinite(values)
    big = torch.iinfo(torch.int64).max
    arg = torch.full((size,), big, dtype=torch.int64, device=values.device)
    arg = arg.scatter_reduce(0, index[wins], arc_ids[wins], reduce="amin", include_self=True)
    return best, torch.where(arg == big, torch.full_like(arg, -1), arg)


class _Stepper:
    """The shared frame loop of Viterbi and forward; ``semiring`` is 'max' or 'log'."""

    def __init__(self, fsas: FsaVec, dense: DenseFsaVec, semiring: str):
        self.fsas, self.dense, self.semiring = fsas, dense, semiring
        self.p = plan(fsas, dense.label_to_column)
        self.lengths = dense.lengths.to(fsas.device)
        self.emit_fsa = fsas.arc_fsa[self.p.emit]
        self.state_length = self.lengths[self.p.state_fsa]
        # Arcs sorted by their utterance's length (longest first): the arcs still running at a
        # frame are then a prefix, a slice instead of a mask per frame.
        self.emit_sorted = self._by_length(self.p.emit, self.p.emit_column)
        self.eps_sorted = [self._by_length(level, None) for level in self.p.eps_levels]

    def _by_length(self, arcs: torch.Tensor, columns: torch.Tensor | None):
        arc_length = self.lengths[self.fsas.arc_fsa[arcs]]
        order = torch.argsort(arc_length, descending=True, stable=True)
        sorted_length = arc_length[order].cpu()
        frames = int(self.lengths.max()) + 1
        # limits[t] = number of arcs whose utterance has more than t frames
        limits = torch.searchsorted(-sorted_length, -torch.arange(frames), right=False).tolist()
        at_least = torch.searchsorted(-sorted_length, -torch.arange(frames), right=True).tolist()
        picked = (arcs[order], columns[order] if columns is not None else None)
        return picked, (limits, at_least)

    def closure(self, alpha: torch.Tensor, step: int, bp: torch.Tensor | None) -> torch.Tensor:
        """Follow epsilon arcs at ``step`` (frames consumed so far) for FSAs still running."""
        f = self.fsas
        for (level, _), (_, at_least) in self.eps_sorted:
            level = level[: at_least[step]]  # utterances with at least `step` frames
            if level.numel() == 0:
                continue
            cand = alpha[f.src[level]] + f.score[level]
            if self.semiring == "max":
                best, arg = _scatter_max(cand, f.dst[level], level, f.num_states)
                better = best > alpha
                alpha = torch.where(better, best, alpha)
                bp[better] = arg[better]
            else:
                alpha = torch.logaddexp(alpha, _scatter_lse(cand, f.dst[level], f.num_states))
        return alpha

    def emit(self, alpha: torch.Tensor, t: int, bp: torch.Tensor | None) -> torch.Tensor:
        """Consume frame ``t``; FSAs with fewer frames keep their states as they are."""
        f = self.fsas
        (arcs, columns), (limits, _) = self.emit_sorted
        n = limits[t]  # arcs of utterances with more than t frames
        arcs, columns = arcs[:n], columns[:n]
        cand = alpha[f.src[arcs]] + f.score[arcs] + self.dense.log_probs[f.arc_fsa[arcs], t, columns]
        if self.semiring == "max":
            new, arg = _scatter_max(cand, f.dst[arcs], arcs, f.num_states)
            bp.copy_(arg)
        else:
            new = _scatter_lse(cand, f.dst[arcs], f.num_states)
        return torch.where(self.state_length <= t, alpha, new)

    def initial(self) -> torch.Tensor:
        alpha = torch.full((self.fsas.num_states,), NEG_INF, dtype=self.dense.log_probs.dtype, device=self.fsas.device)
        alpha[self.fsas.start_states] = 0.0
        return alpha

    def final_scores(self, alpha: torch.Tensor):
        f, final = self.fsas, self.p.final
        cand = alpha[f.src[final]] + f.score[final]
        if self.semiring == "max":
            return _scatter_max(cand, f.arc_fsa[final], final, f.batch_size)
        return _scatter_lse(cand, f.arc_fsa[final], f.batch_size), None


def _check(fsas: FsaVec, dense: DenseFsaVec) -> None:
    if dense.log_probs.dim() != 3 or dense.log_probs.shape[0] != fsas.batch_size:
        raise ValueError(f"log_probs must be [B={fsas.batch_size}, T, C], got {tuple(dense.log_probs.shape)}")
    if int(dense.lengths.max()) > dense.log_probs.shape[1]:
        raise ValueError("a length exceeds the frames of log_probs")


@dataclass
class BestPath:
    scores: torch.Tensor  # [B] best path score (-inf where no path)
    labels: list[list[int]]  # per utterance, the label of each frame (e.g. transition ids)


def shortest_path(fsas: FsaVec, dense: DenseFsaVec) -> BestPath:
    """Viterbi: the best path of each FSA through its utterance's frames, and its frame labels."""
    _check(fsas, dense)
    with torch.no_grad():
        run = _Stepper(fsas, dense, "max")
        T, S = int(dense.lengths.max()), fsas.num_states
        bp_emit = torch.full((T + 1, S), -1, dtype=torch.int64, device=fsas.device)
        bp_eps = torch.full((T + 1, S), -1, dtype=torch.int64, device=fsas.device)
        alpha = run.closure(run.initial(), 0, bp_eps[0])
        for t in range(T):
            alpha = run.emit(alpha, t, bp_emit[t + 1])
            alpha = run.closure(alpha, t + 1, bp_eps[t + 1])
        scores, final_arc = run.final_scores(alpha)

    src, label = fsas.src.cpu().numpy(), fsas.label.cpu().numpy()
    bp_emit_np, bp_eps_np = bp_emit.cpu().numpy(), bp_eps.cpu().numpy()
    lengths, final_arc = dense.lengths.cpu().numpy(), final_arc.cpu().numpy()
    paths = []
    for b in range(fsas.batch_size):
        if final_arc[b] < 0:
            paths.append([])
            continue
        state, step, frames = int(src[final_arc[b]]), int(lengths[b]), []
        while True:
            arc = bp_eps_np[step, state]
            if arc >= 0:
                state = int(src[arc])
                continue
            if step == 0:
                break
            arc = bp_emit_np[step, state]
            frames.append(int(label[arc]))
            state, step = int(src[arc]), step - 1
        paths.append(frames[::-1])
    return BestPath(scores, paths)


def _forward(fsas: FsaVec, dense: DenseFsaVec):
    run = _Stepper(fsas, dense, "log")
    T = int(dense.lengths.max())
    alphas = [run.closure(run.initial(), 0, None)]
    for t in range(T):
        alphas.append(run.closure(run.emit(alphas[-1], t, None), t + 1, None))
    # FSA b's final scores are read at its own length; frozen states keep them until T.
    totals, _ = run.final_scores(alphas[-1])
    return run, torch.stack(alphas), totals


def _backward(run: _Stepper, alphas: torch.Tensor, totals: torch.Tensor):
    """Occupation posteriors of emitting arcs per frame: [T, num emitting arcs] (probabilities)."""
    f, p, dense = run.fsas, run.p, run.dense
    T, S = alphas.shape[0] - 1, f.num_states
    lengths = run.lengths
    final = p.final
    beta_final = _scatter_lse(f.score[final], f.src[final], S)  # final-arc scores from each state
    posteriors = torch.zeros(T, p.emit.numel(), dtype=alphas.dtype, device=f.device)
    beta = torch.full((S,), NEG_INF, dtype=alphas.dtype, device=f.device)
    ends_here = lambda step: lengths[p.state_fsa] == step  # noqa: E731
    for step in range(T, -1, -1):
        beta = torch.where(ends_here(step), beta_final, beta)  # beta after the closure at `step`
        for level in reversed(p.eps_levels):  # back through the closure (deepest sources last in forward)
            level = level[lengths[f.arc_fsa[level]] >= step]
            if level.numel():
                cand = f.score[level] + beta[f.dst[level]]
                beta = torch.logaddexp(beta, _scatter_lse(cand, f.src[level], S))
        if step == 0:
            break
        t = step - 1
        running = lengths[run.emit_fsa] > t
        arcs = p.emit[running]
        through = f.score[arcs] + dense.log_probs[f.arc_fsa[arcs], t, p.emit_column[running]] + beta[f.dst[arcs]]
        post = torch.exp(alphas[t][f.src[arcs]] + through - totals[f.arc_fsa[arcs]])
        posteriors[t, running] = torch.nan_to_num(post, nan=0.0)
        new_beta = _scatter_lse(through, f.src[arcs], S)
        beta = torch.where(lengths[p.state_fsa] > t, new_beta, torch.full_like(beta, NEG_INF))
    return posteriors, beta[f.start_states]


class _TotScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_probs, fsas, dense):
        dense = DenseFsaVec(log_probs.detach(), dense.lengths, dense.label_to_column)
        run, alphas, totals = _forward(fsas, dense)
        ctx.saved = (run, alphas, totals)
        return totals

    @staticmethod
    def backward(ctx, grad_totals):
        run, alphas, totals = ctx.saved
        posteriors, _ = _backward(run, alphas, totals)
        f, p = run.fsas, run.p
        log_probs = run.dense.log_probs
        B, T, C = log_probs.shape
        grad = torch.zeros(B * T * C, dtype=log_probs.dtype, device=log_probs.device)
        steps = posteriors.shape[0]
        utt = f.arc_fsa[p.emit]
        t_index = torch.arange(steps, device=log_probs.device)[:, None]
        flat = (utt[None, :] * T + t_index) * C + p.emit_column[None, :]
        weights = posteriors * grad_totals[utt][None, :]
        grad.index_add_(0, flat.reshape(-1), weights.reshape(-1))
        return grad.view(B, T, C), None, None


def get_tot_scores(fsas: FsaVec, dense: DenseFsaVec, log_semiring: bool = True) -> torch.Tensor:
    """Total score of each FSA with its utterance: log-sum over paths (differentiable), or the best path."""
    _check(fsas, dense)
    if not log_semiring:
        return shortest_path(fsas, dense).scores
    return _TotScores.apply(dense.log_probs, fsas, dense)


def arc_posteriors(fsas: FsaVec, dense: DenseFsaVec):
    """(totals [B], posteriors [T, emitting arcs], emitting arc ids): forward-backward occupation."""
    _check(fsas, dense)
    with torch.no_grad():
        run, alphas, totals = _forward(fsas, dense)
        posteriors, _ = _backward(run, alphas, totals)
    return totals, posteriors, run.p.emit


def backward_totals(fsas: FsaVec, dense: DenseFsaVec) -> torch.Tensor:
    """Totals from the backward pass alone (they must equal the forward ones: a self-check)."""
    with torch.no_grad():
        run, alphas, totals = _forward(fsas, dense)
        _, start_beta = _backward(run, alphas, totals)
    return start_beta


def state_posteriors(fsas: FsaVec, dense: DenseFsaVec) -> torch.Tensor:
    """Occupation of each state right after each frame: [T, num_states], from the emitting arcs entering it."""
    totals, posteriors, emit = arc_posteriors(fsas, dense)
    out = torch.zeros(posteriors.shape[0], fsas.num_states, dtype=posteriors.dtype, device=posteriors.device)
    return out.index_add_(1, fsas.dst[emit], posteriors)
