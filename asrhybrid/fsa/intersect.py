"""The torch engine: frame-synchronous intersection of an FsaVec with a DenseFsaVec (k2's intersect_dense).

One step per frame for the whole batch. States are laid out by their
utterance's length, longest first, so the states still running at frame ``t``
are a prefix; each state's incoming emitting arcs (label > 0) sit in one row
of a padded [states, max in-degree] table (padding reads an always -inf
state). A frame is then a few gathers and one reduction along the rows: max
(Viterbi, with the row position as the back-pointer) or log-sum-exp (forward).
Epsilon arcs (label 0) follow within the frame, level by level in topological
order of the epsilon subgraph (which must be acyclic, as in Kaldi's graphs),
with a table per level. FSA ``b`` stops at ``lengths[b]`` frames: its states
are frozen afterwards and its final-arc scores are read there.

The frame loop has no host synchronisation (no masks, no data-dependent
shapes: the prefix sizes are known from the lengths beforehand) and the
backtrace runs on the device for the whole batch, so on CUDA the loop is
bound by kernel launches, not by round trips. Runs on whatever device the
tensors are on.

The tables are as wide as the largest in-degree, which suits training
graphs (in-degree 3 or so); a decoding graph's few states with thousands of
arcs in (HCLG's loop states) would need another layout.

The backward pass mirrors the forward one with outgoing-arc tables, giving
arc occupation posteriors; ``get_tot_scores`` wraps forward and backward in an
autograd Function whose gradient wrt ``log_probs`` is the posterior occupation
of each (utterance, frame, column), so an FSA objective (CTC, MMI-style) can
train a network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asrhybrid.fsa.fsa import BestPath, DenseFsaVec, FsaVec

NEG_INF = float("-inf")


@dataclass
class _Table:
    """Arcs grouped into padded rows: row r holds the arcs of ``rows[r]`` (by key state), ascending arc id.

    ``other`` is the other end of each arc (a position; ``pad`` where padding),
    ``arc`` the arc id (-1 where padding), ``score`` its score (0 where padding).
    """

    rows: torch.Tensor  # [R] positions
    other: torch.Tensor  # [R, K]
    arc: torch.Tensor  # [R, K]
    score: torch.Tensor  # [R, K]


def _table(key: np.ndarray, other: np.ndarray, arcs: np.ndarray, scores: np.ndarray, pad: int, to) -> _Table:
    """Rows of arcs sharing ``key`` (positions), rows sorted by key, each row by arc id."""
    order = np.lexsort((arcs, key))
    key, other, arcs, scores = key[order], other[order], arcs[order], scores[order]
    rows, first, count = np.unique(key, return_index=True, return_counts=True)
    width = int(count.max()) if len(count) else 1
    rank = np.arange(len(key)) - np.repeat(first, count)
    row = np.repeat(np.arange(len(rows)), count)
    grid_other = np.full((len(rows), width), pad, dtype=np.int64)
    grid_arc = np.full((len(rows), width), -1, dtype=np.int64)
    grid_score = np.zeros((len(rows), width), dtype=np.float64)
    grid_other[row, rank], grid_arc[row, rank], grid_score[row, rank] = other, arcs, scores
    return _Table(to(rows), to(grid_other), to(grid_arc), to(grid_score, float))


def _count_above(lengths: np.ndarray, steps: int, strict: bool) -> list[int]:
    """For t in 0..steps-1, how many of ``lengths`` are > t (``strict``) or >= t."""
    ordered = np.sort(lengths)
    return (len(ordered) - np.searchsorted(ordered, np.arange(steps), side="right" if strict else "left")).tolist()


def _epsilon_depths(num_states: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Longest epsilon-path depth of every state (Kahn's algorithm over the epsilon arcs); refuses cycles."""
    depth = np.zeros(num_states, dtype=np.int64)
    indegree = np.bincount(dst, minlength=num_states)
    order = np.argsort(src, kind="stable")
    starts = np.searchsorted(src[order], np.arange(num_states + 1))
    frontier = np.unique(src[indegree[src] == 0])
    visited = 0
    while len(frontier):
        spans = [order[starts[s] : starts[s + 1]] for s in frontier]
        arcs = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        visited += len(arcs)
        np.maximum.at(depth, dst[arcs], depth[src[arcs]] + 1)
        np.subtract.at(indegree, dst[arcs], 1)
        done = np.unique(dst[arcs])
        frontier = done[indegree[done] == 0]
    if visited != len(src):
        raise ValueError("the FSA has an epsilon cycle; remove epsilons first (kaldifst.rmepsilon)")
    return depth


class _Layout:
    """Index tensors of one FsaVec with one set of lengths, built once (on the host, then moved)."""

    def __init__(self, fsas: FsaVec, dense: DenseFsaVec):
        device, dtype = fsas.device, dense.log_probs.dtype
        B, T, C = dense.log_probs.shape
        self.T, self.C, self.num_states, self.batch_size = T, C, fsas.num_states, fsas.batch_size
        src, dst = fsas.src.cpu().numpy(), fsas.dst.cpu().numpy()
        label, score = fsas.label.cpu().numpy(), fsas.score.cpu().double().numpy()
        arc_fsa = fsas.arc_fsa.cpu().numpy()
        lengths = dense.lengths.cpu().numpy().astype(np.int64)
        state_fsa = fsas.state_fsa().cpu().numpy()
        S = self.num_states
        pad = S  # the extra, always -inf, slot of alpha and beta

        order = np.argsort(-lengths[state_fsa], kind="stable")  # position -> state
        pos = np.empty(S, dtype=np.int64)
        pos[order] = np.arange(S)  # state -> position
        pos_length = lengths[state_fsa][order]
        self.lengths = lengths
        # running[t] = positions whose utterance has more than t frames (a prefix of the positions)
        self.running = _count_above(pos_length, T + 1, strict=True)

        to = lambda a, kind=int: torch.as_tensor(  # noqa: E731
            a, dtype=torch.int64 if kind is int else dtype, device=device
        )
        self.pos_fsa = to(state_fsa[order])
        self.start = to(pos[fsas.start_states.cpu().numpy()])
        column = dense.label_to_column.cpu().numpy()

        emit = np.flatnonzero(label > 0)
        self.emit_arcs = to(emit)
        self.emit_column = to(column[label[emit]])
        # frame t of arc a's utterance, column of its label: log_probs.view(-1)[t * C + base[a]]
        base = np.zeros(len(label), dtype=np.int64)
        base[emit] = arc_fsa[emit] * T * C + column[label[emit]]
        self.base = to(base)
        # padding entries read a frame of the longest utterance: always inside its length, so
        # never a frame past the lengths, which callers need not fill
        self.pad_base = int(np.argmax(lengths)) * T * C if len(lengths) else 0
        # one row per position (states without emitting arcs in: all padding)
        self.incoming = self._all_rows(_table(pos[dst[emit]], pos[src[emit]], emit, score[emit], pad, to), S, pad)
        self.incoming_base = self._pad_base(self.incoming.arc)

        eps = np.flatnonzero(label == 0)
        depth = _epsilon_depths(S, src[eps], dst[eps])[src[eps]] if len(eps) else np.zeros(0, dtype=np.int64)
        self.eps_in, self.eps_out = [], []
        for level in range(int(depth.max()) + 1 if len(eps) else 0):
            arcs = eps[depth == level]
            self.eps_in.append(_table(pos[dst[arcs]], pos[src[arcs]], arcs, score[arcs], pad, to))
            self.eps_out.append(_table(pos[src[arcs]], pos[dst[arcs]], arcs, score[arcs], pad, to))
        # rows of each epsilon table whose utterance has at least `step` frames (a prefix: rows are positions)
        self.eps_in_reaching = [self._prefix(t.rows, pos_length) for t in self.eps_in]
        self.eps_out_reaching = [self._prefix(t.rows, pos_length) for t in self.eps_out]

        final = np.flatnonzero(label == -1)
        self.final = self._all_rows(_table(arc_fsa[final], pos[src[final]], final, score[final], pad, to), B, pad)
        self.final_of_pos = (pos[src[final]], score[final])
        # what the backward pass's outgoing-arc table needs, built on first use
        self._emit_ends = (pos[src[emit]], pos[dst[emit]], emit, score[emit])
        self._num_arcs, self._to, self._outgoing = len(label), to, None

    @staticmethod
    def _prefix(rows: torch.Tensor, pos_length: np.ndarray) -> list[int]:
        return _count_above(pos_length[rows.cpu().numpy()], int(pos_length.max(initial=0)) + 1, strict=False)

    def _pad_base(self, arcs: torch.Tensor) -> torch.Tensor:
        return torch.where(arcs >= 0, self.base[arcs.clamp(min=0)], torch.full_like(arcs, self.pad_base))

    @staticmethod
    def _all_rows(table: _Table, n: int, pad: int) -> _Table:
        """The table with a row for every key 0..n-1 (empty rows all padding)."""
        K = table.other.shape[1]
        device = table.other.device
        other = torch.full((n, K), pad, dtype=torch.int64, device=device)
        arc = torch.full((n, K), -1, dtype=torch.int64, device=device)
        score = torch.zeros((n, K), dtype=table.score.dtype, device=device)
        other[table.rows], arc[table.rows], score[table.rows] = table.other, table.arc, table.score
        return _Table(torch.arange(n, device=device), other, arc, score)

    def outgoing(self):
        """(table of emitting arcs by source position, their log_probs bases, their index among the emitting arcs)."""
        if self._outgoing is None:
            src, dst, emit, score = self._emit_ends
            S, E, device = self.num_states, len(emit), self.emit_arcs.device
            table = self._all_rows(_table(src, dst, emit, score, S, self._to), S, S)
            emit_index = torch.full((self._num_arcs,), E, dtype=torch.int64, device=device)
            emit_index[self.emit_arcs] = torch.arange(E, device=device)
            self._outgoing = (
                table,
                self._pad_base(table.arc),
                emit_index[table.arc.clamp(min=0)].masked_fill(table.arc < 0, E),
            )
        return self._outgoing

    def frame_scores(self, log_probs: torch.Tensor, base: torch.Tensor, rows: int, t: int) -> torch.Tensor:
        """log_probs of the arcs in the first ``rows`` rows of a padded table at frame ``t``."""
        flat = log_probs.reshape(-1)
        view = flat.narrow(0, t * self.C, flat.numel() - t * self.C)
        return view.index_select(0, base[:rows].reshape(-1)).view(rows, -1)


def _code_dtype(table: _Table) -> torch.dtype:
    """The smallest type for back-pointer codes 0..width (the width itself: not improved)."""
    return torch.uint8 if table.other.shape[1] < 255 else torch.int32


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.index_select(0, index.reshape(-1)).view(index.shape)


def _check(fsas: FsaVec, dense: DenseFsaVec) -> None:
    if dense.log_probs.dim() != 3 or dense.log_probs.shape[0] != fsas.batch_size:
        raise ValueError(f"log_probs must be [B={fsas.batch_size}, T, C], got {tuple(dense.log_probs.shape)}")
    if int(dense.lengths.max()) > dense.log_probs.shape[1]:
        raise ValueError("a length exceeds the frames of log_probs")
    # an index past the score matrix would read another utterance's or frame's scores silently
    labels = fsas.label[fsas.label > 0]
    if labels.numel():
        top = int(labels.max())
        if top >= dense.label_to_column.numel():
            raise ValueError(
                f"label {top} has no score column (label_to_column has {dense.label_to_column.numel()} entries)"
            )
        column = int(dense.label_to_column.to(labels.device)[labels].max())
        if column >= dense.log_probs.shape[2]:
            raise ValueError(
                f"label_to_column maps a label to column {column}, past the {dense.log_probs.shape[2]} "
                "columns of log_probs"
            )


class _Run:
    """The frame loop shared by Viterbi (``semiring='max'``) and forward (``'log'``)."""

    def __init__(self, fsas: FsaVec, dense: DenseFsaVec, semiring: str):
        self.fsas, self.dense, self.semiring = fsas, dense, semiring
        self.lay = _Layout(fsas, dense)
        self.log_probs = dense.log_probs.contiguous()
        self.steps = int(dense.lengths.max()) if fsas.batch_size else 0

    def initial(self) -> torch.Tensor:
        alpha = torch.full((self.lay.num_states + 1,), NEG_INF, dtype=self.log_probs.dtype, device=self.fsas.device)
        alpha[self.lay.start] = 0.0
        return alpha

    def closure(self, alpha: torch.Tensor, step: int, bp: list[torch.Tensor] | None) -> None:
        """Follow epsilon arcs in place at ``step`` (frames consumed) for FSAs still running."""
        for level, (table, reaching) in enumerate(zip(self.lay.eps_in, self.lay.eps_in_reaching)):
            m = reaching[step] if step < len(reaching) else 0
            if m == 0:
                continue
            cand = _gather(alpha, table.other[:m]) + table.score[:m]
            rows = table.rows[:m]
            current = alpha[rows]
            if self.semiring == "max":
                best, arg = cand.max(dim=1)
                better = best > current
                alpha[rows] = torch.where(better, best, current)
                bp[level][step, :m] = torch.where(better, arg, torch.full_like(arg, table.other.shape[1]))
            else:
                alpha[rows] = torch.logaddexp(current, torch.logsumexp(cand, dim=1))

    def emit(self, alpha: torch.Tensor, t: int, bp: torch.Tensor | None) -> None:
        """Consume frame ``t`` in place; FSAs with at most ``t`` frames keep their states as they are."""
        n = self.lay.running[t]
        table = self.lay.incoming
        cand = _gather(alpha, table.other[:n])
        cand += table.score[:n]
        cand += self.lay.frame_scores(self.log_probs, self.lay.incoming_base, n, t)
        if self.semiring == "max":
            best, arg = cand.max(dim=1)
            bp[t + 1, :n] = arg
        else:
            best = torch.logsumexp(cand, dim=1)
        alpha[:n] = best

    def final_scores(self, alpha: torch.Tensor):
        table = self.lay.final
        cand = _gather(alpha, table.other) + table.score
        if self.semiring == "max":
            best, arg = cand.max(dim=1)
            return best, table.other.gather(1, arg[:, None]).squeeze(1)
        return torch.logsumexp(cand, dim=1), None


def shortest_path(fsas: FsaVec, dense: DenseFsaVec) -> BestPath:
    """Viterbi: the best path of each FSA through its utterance's frames, and its frame labels."""
    _check(fsas, dense)
    device = fsas.device
    with torch.no_grad():
        run = _Run(fsas, dense, "max")
        lay, T, S = run.lay, run.steps, fsas.num_states
        # back-pointers: the column of the winning arc in its table row; for epsilon tables, the
        # table's width where the state was not improved through it (one extra row: never improved)
        bp_emit = torch.zeros((T + 1, S + 1), dtype=_code_dtype(lay.incoming), device=device)
        bp_eps = [
            torch.full((T + 1, len(t.rows) + 1), t.other.shape[1], dtype=_code_dtype(t), device=device)
            for t in lay.eps_in
        ]
        alpha = run.initial()
        run.closure(alpha, 0, bp_eps)
        for t in range(T):
            run.emit(alpha, t, bp_emit)
            run.closure(alpha, t + 1, bp_eps)
        scores, state = run.final_scores(alpha)

        # Backtrace, all utterances at once: utterance b joins at step lengths[b].
        eps_row = []  # position -> row of each epsilon table (its extra row, never improved, elsewhere)
        for table in lay.eps_in:
            row = torch.full((S + 1,), len(table.rows), dtype=torch.int64, device=device)
            row[table.rows] = torch.arange(len(table.rows), device=device)
            eps_row.append(row)
        # the same tables with a padding row (for the padding state S) and column (for "not improved")
        eps_back = [torch.nn.functional.pad(t.other, (0, 1, 0, 1), value=S) for t in lay.eps_in]
        emit_back = torch.nn.functional.pad(lay.incoming.other, (0, 0, 0, 1), value=S)
        emit_label = fsas.label[torch.nn.functional.pad(lay.incoming.arc, (0, 0, 0, 1), value=-1).clamp(min=0)]
        lengths = torch.as_tensor(lay.lengths, device=device)
        labels = torch.zeros((fsas.batch_size, max(T, 1)), dtype=torch.int64, device=device)
        for step in range(T, -1, -1):
            active = lengths >= step
            for level in reversed(range(len(lay.eps_in))):
                row = eps_row[level][state]
                code = bp_eps[level][step, row].long()
                taken = active & (code < lay.eps_in[level].other.shape[1])
                state = torch.where(taken, eps_back[level][row, code], state)
            if step == 0:
                break
            k = bp_emit[step, state].long()
            labels[:, step - 1] = emit_label[state, k]
            state = torch.where(active, emit_back[state, k], state)

    labels_host, ok = labels.cpu().tolist(), torch.isfinite(scores).cpu().tolist()
    paths = [labels_host[b][: lay.lengths[b]] if ok[b] else [] for b in range(fsas.batch_size)]
    return BestPath(scores, paths)


def _forward(fsas: FsaVec, dense: DenseFsaVec):
    run = _Run(fsas, dense, "log")
    alphas = torch.empty((run.steps + 1, fsas.num_states + 1), dtype=run.log_probs.dtype, device=fsas.device)
    alpha = run.initial()
    run.closure(alpha, 0, None)
    alphas[0] = alpha
    for t in range(run.steps):
        run.emit(alpha, t, None)
        run.closure(alpha, t + 1, None)
        alphas[t + 1] = alpha
    # FSA b's final scores are read at its own length; frozen states keep them until the last frame.
    totals, _ = run.final_scores(alpha)
    return run, alphas, totals


def _scatter_lse(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """log-sum-exp of ``values`` grouped by ``index`` into ``size`` slots (-inf where empty)."""
    m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    total = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(
        0, index, torch.exp(values - safe[index])
    )
    return torch.where(total > 0, safe + torch.log(total), torch.full_like(m, NEG_INF))


def _backward(run: _Run, alphas: torch.Tensor, totals: torch.Tensor):
    """Occupation posteriors of emitting arcs per frame: [T, num emitting arcs] (probabilities)."""
    lay, f = run.lay, run.fsas
    T, S, E = run.steps, f.num_states, lay.emit_arcs.numel()
    device, dtype = f.device, alphas.dtype
    out, out_base, out_emit = lay.outgoing()
    final_pos, final_score = lay.final_of_pos
    beta_final = _scatter_lse(
        torch.as_tensor(final_score, dtype=dtype, device=device),
        torch.as_tensor(final_pos, dtype=torch.int64, device=device),
        S + 1,
    )
    total_pos = totals[lay.pos_fsa]
    posteriors = torch.zeros(T, E + 1, dtype=dtype, device=device)
    beta = torch.full((S + 1,), NEG_INF, dtype=dtype, device=device)
    for step in range(T, -1, -1):
        # positions whose utterance ends at `step`: [running[step], running[step - 1]) (all the rest at step 0)
        lo = lay.running[step] if step <= T else 0
        hi = lay.running[step - 1] if step > 0 else S
        beta[lo:hi] = beta_final[lo:hi]
        for table, reaching in zip(reversed(lay.eps_out), reversed(lay.eps_out_reaching)):
            m = reaching[step] if step < len(reaching) else 0
            if m:
                cand = table.score[:m] + _gather(beta, table.other[:m])
                rows = table.rows[:m]
                beta[rows] = torch.logaddexp(beta[rows], torch.logsumexp(cand, dim=1))
        if step == 0:
            break
        t = step - 1
        n = lay.running[t]
        through = out.score[:n] + lay.frame_scores(run.log_probs, out_base, n, t) + _gather(beta, out.other[:n])
        post = torch.exp(alphas[t, :n, None] + through - total_pos[:n, None])
        posteriors[t].index_copy_(0, out_emit[:n].reshape(-1), torch.nan_to_num(post, nan=0.0).reshape(-1))
        beta[:n] = torch.logsumexp(through, dim=1)
        beta[n:S] = NEG_INF
    posteriors[:, E] = 0.0
    return posteriors[:, :E], beta[lay.start]


def _in_double(dense: DenseFsaVec, log_probs: torch.Tensor, use_double_scores: bool) -> DenseFsaVec:
    """The scores in float64 when asked (k2's use_double_scores): sums of hundreds of frames in float32
    leave posteriors about 1e-3 off (alpha + beta - total of magnitude 1e3)."""
    log_probs = log_probs.detach()
    return DenseFsaVec(log_probs.double() if use_double_scores else log_probs, dense.lengths, dense.label_to_column)


class _TotScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_probs, fsas, dense, use_double_scores):
        run, alphas, totals = _forward(fsas, _in_double(dense, log_probs, use_double_scores))
        ctx.saved = (run, alphas, totals)
        ctx.dtype = log_probs.dtype
        return totals.to(log_probs.dtype)

    @staticmethod
    def backward(ctx, grad_totals):
        run, alphas, totals = ctx.saved
        posteriors, _ = _backward(run, alphas, totals)
        lay = run.lay
        log_probs = run.log_probs
        B, T, C = log_probs.shape
        grad = torch.zeros(B * T * C, dtype=log_probs.dtype, device=log_probs.device)
        utt = run.fsas.arc_fsa[lay.emit_arcs]
        t_index = torch.arange(posteriors.shape[0], device=log_probs.device)[:, None]
        flat = (utt[None, :] * T + t_index) * C + lay.emit_column[None, :]
        weights = posteriors * grad_totals.to(posteriors.dtype)[utt][None, :]
        grad.index_add_(0, flat.reshape(-1), weights.reshape(-1))
        return grad.view(B, T, C).to(ctx.dtype), None, None, None


def get_tot_scores(
    fsas: FsaVec, dense: DenseFsaVec, log_semiring: bool = True, use_double_scores: bool = True
) -> torch.Tensor:
    """Total score of each FSA with its utterance: log-sum over paths (differentiable), or the best path."""
    _check(fsas, dense)
    if not log_semiring:
        return shortest_path(fsas, dense).scores
    return _TotScores.apply(dense.log_probs, fsas, dense, use_double_scores)


def arc_posteriors(fsas: FsaVec, dense: DenseFsaVec, use_double_scores: bool = True):
    """(totals [B], posteriors [T, emitting arcs], emitting arc ids): forward-backward occupation."""
    _check(fsas, dense)
    with torch.no_grad():
        run, alphas, totals = _forward(fsas, _in_double(dense, dense.log_probs, use_double_scores))
        posteriors, _ = _backward(run, alphas, totals)
    dtype = dense.log_probs.dtype
    return totals.to(dtype), posteriors.to(dtype), run.lay.emit_arcs


def backward_totals(fsas: FsaVec, dense: DenseFsaVec) -> torch.Tensor:
    """Totals from the backward pass alone (they must equal the forward ones: a self-check)."""
    with torch.no_grad():
        run, alphas, totals = _forward(fsas, dense)
        _, start_beta = _backward(run, alphas, totals)
    return start_beta
