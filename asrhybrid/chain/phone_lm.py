"""The phone language model of LF-MMI's denominator graph: Kaldi chain's estimator (chain-est-phone-lm).

An n-gram model of the training alignments' phone sequences with no smoothing: a history state has arcs only
for the phones seen after it, with probability count / total (a phone never seen after it has probability 0,
so the graph stays small: Povey et al. 2016, section 2.3). Its size is bounded by "hard backoff": every
history of fewer than ``no_prune_ngram_order`` phones is kept (the triphone context the tree sees anyway);
longer histories are merged into the history one phone shorter, the merge that loses the least training
log-likelihood first, until ``num_extra_states`` states remain beyond those. A merged history's counts move to
its backoff state, and arcs that would enter it enter the longest surviving suffix instead. There are no
backoff arcs: the result is a deterministic acceptor over phones, whose end-of-sentence probability is each
state's final weight. Sentence starts are a history of phone 0 (BOS).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from asrhybrid.errors import ConfigError
from asrhybrid.kaldi_wrappers import kaldifst

History = tuple[int, ...]
_BOS = 0  # the left context of a sentence's first phone; as the next "phone", the end of the sentence


@dataclass
class PhoneLmOptions:
    ngram_order: int = 4
    no_prune_ngram_order: int = 3  # histories shorter than this are never merged (Kaldi: the context width)
    num_extra_states: int = 2000  # Kaldi chain's recipes: --num-extra-lm-states=2000

    def __post_init__(self):
        if self.ngram_order < 2 or not 1 <= self.no_prune_ngram_order <= self.ngram_order:
            raise ConfigError(
                f"phone LM: ngram_order {self.ngram_order} must be >= 2 and no_prune_ngram_order "
                f"{self.no_prune_ngram_order} between 1 and it"
            )
        if self.num_extra_states < 0:
            raise ConfigError(f"phone LM: num_extra_states {self.num_extra_states} < 0")


@dataclass
class _State:
    history: History
    counts: Counter = field(default_factory=Counter)  # next phone (0: end of sentence) -> count
    total: int = 0
    total_with_children: int = 0  # its count and that of every longer history that backs off to it
    backoff: History | None = None  # the history one phone shorter, for states that may be merged

    def log_likelihood(self) -> float:
        return sum(c * math.log(c / self.total) for c in self.counts.values())


@dataclass
class PhoneLm:
    """The estimated model: states (by history), arcs (state, phone, next state, log-probability), the
    end-of-sentence log-probability of each state that has one, and the start state."""

    histories: list[History]
    arcs: list[tuple[int, int, int, float]]
    final: dict[int, float]
    start: int

    @property
    def num_states(self) -> int:
        return len(self.histories)

    def sentence_log_prob(self, phones: list[int]) -> float:
        """log P(phones, end of sentence); -inf for a sequence the model cannot produce."""
        arcs = {(s, p): (d, lp) for s, p, d, lp in self.arcs}
        state, total = self.start, 0.0
        for p in phones:
            if (state, p) not in arcs:
                return -math.inf
            state, lp = arcs[state, p]
            total += lp
        return total + self.final.get(state, -math.inf)

    def to_fst(self):
        """The model as a kaldifst acceptor (phone labels, costs = -log-probabilities), arcs sorted by label."""
        fst = kaldifst.StdVectorFst()
        for _ in self.histories:
            fst.add_state()
        fst.start = self.start
        for s, p, d, lp in self.arcs:
            fst.add_arc(s, kaldifst.StdArc(p, p, -lp, d))
        for s, lp in self.final.items():
            fst.set_final(s, -lp)
        kaldifst.arcsort(fst, sort_type="ilabel")
        return fst


class PhoneLmEstimator:
    """Counts phone sequences (:meth:`add`), then :meth:`estimate` merges histories and returns the model."""

    def __init__(self, options: PhoneLmOptions | None = None):
        self.options = options or PhoneLmOptions()
        self._states: dict[History, _State] = {}

    def add(self, phones: Iterable[int]) -> None:
        """Counts every n-gram of one sentence (phone ids > 0), its end included."""
        keep = self.options.ngram_order - 1
        history: History = (_BOS,)
        for p in phones:
            if p <= 0:
                raise ValueError(f"phone id {p} in a phone sequence: ids are > 0 (0 is the sentence boundary)")
            self._count(history, p)
            history = (history + (p,))[-keep:]
        self._count(history, _BOS)

    def estimate(self) -> PhoneLm:
        if not self._states:
            raise ValueError("phone LM: no phone sequences were counted")
        for state in list(self._states.values()):  # counts flow down the backoff chain
            h: History | None = state.history
            while h is not None:
                self._states[h].total_with_children += state.total
                h = self._states[h].backoff
        basic = sum(1 for h in self._states if len(h) == self.options.no_prune_ngram_order - 1)
        self._merge_down_to(basic + self.options.num_extra_states)
        return self._model()

    # -- counting ------------------------------------------------------------------------------------------
    def _count(self, history: History, phone: int) -> None:
        state = self._state(history)
        state.counts[phone] += 1
        state.total += 1

    def _state(self, history: History) -> _State:
        """The state of ``history``, made (with its backoff chain down to the unpruned order) if new."""
        state = self._states.get(history)
        if state is None:
            state = self._states[history] = _State(history)
            if len(history) >= self.options.no_prune_ngram_order:
                state.backoff = history[1:]
                self._state(state.backoff)
        return state

    # -- merging -------------------------------------------------------------------------------------------
    def _active(self) -> int:
        return sum(1 for s in self._states.values() if s.total > 0)

    def _mergeable(self, state: _State) -> bool:
        """A state may be merged into its backoff once every longer history that backs off to it has been
        (its total then equals total_with_children), and none of its successors' histories still exists
        (an arc out of it needs all of its context to find its destination)."""
        if state.backoff is None or state.total == 0 or state.total != state.total_with_children:
            return False
        if len(state.history) == self.options.ngram_order - 1:
            return True
        for p in state.counts:
            nxt = self._states.get(state.history + (p,)) if p != _BOS else None
            if nxt is not None and nxt.total_with_children > 0:
                return False
        return True

    def _merge_cost(self, state: _State) -> float:
        """The training log-likelihood lost by merging ``state`` into its backoff (>= 0); into an empty backoff
        nothing is lost, and the smallest state goes first."""
        backoff = self._states[state.backoff]
        if backoff.total == 0:
            return 1e-15 * state.total
        merged = _State(backoff.history, backoff.counts + state.counts, backoff.total + state.total)
        return max(0.0, state.log_likelihood() + backoff.log_likelihood() - merged.log_likelihood())

    def _merge(self, state: _State) -> None:
        backoff = self._states[state.backoff]
        backoff.counts.update(state.counts)
        backoff.total += state.total
        state.counts, state.total, state.total_with_children = Counter(), 0, 0

    def _merge_down_to(self, target: int) -> None:
        """Merges the cheapest states until ``target`` states have counts. Costs go stale as states merge, so
        a popped cost is recomputed (and pushed back if it changed); the queue is rebuilt in four rounds of
        shrinking targets, as Kaldi does, to let states whose successors merged meanwhile enter it."""
        start = self._active()
        order = {h: i for i, h in enumerate(self._states)}  # ties broken by first appearance: deterministic
        for round_ in range(1, 5):
            round_target = start + (target - start) * round_ // 4
            queue = [
                (self._merge_cost(s), order[s.history], s.history) for s in self._states.values() if self._mergeable(s)
            ]
            heapq.heapify(queue)
            active = self._active()
            while active > round_target and queue:
                cost, _, history = heapq.heappop(queue)
                state = self._states[history]
                if not self._mergeable(state):
                    continue
                fresh = self._merge_cost(state)
                if not math.isclose(fresh, cost, rel_tol=1e-6, abs_tol=1e-12):
                    heapq.heappush(queue, (fresh, order[history], history))
                    continue
                backoff = self._states[state.backoff]
                was_mergeable = self._mergeable(backoff)
                if backoff.total > 0:
                    active -= 1
                self._merge(state)
                if not was_mergeable and self._mergeable(backoff):
                    heapq.heappush(queue, (self._merge_cost(backoff), order[backoff.history], backoff.history))

    # -- the model -----------------------------------------------------------------------------------------
    def _surviving(self, history: History) -> int:
        """The longest suffix of ``history`` whose state has counts (its index among the kept states)."""
        while True:
            state = self._states.get(history)
            if state is not None and state.total > 0:
                return self._index[history]
            if not history:
                raise ValueError(f"phone LM: no state for any suffix of history {history}")
            history = history[1:]

    def _model(self) -> PhoneLm:
        kept = [s for s in self._states.values() if s.total > 0]
        self._index = {s.history: i for i, s in enumerate(kept)}
        arcs, final = [], {}
        for i, state in enumerate(kept):
            for p, c in sorted(state.counts.items()):
                lp = math.log(c / state.total)
                if p == _BOS:
                    final[i] = lp
                else:
                    arcs.append((i, p, self._surviving(state.history + (p,)), lp))
        return PhoneLm([s.history for s in kept], arcs, final, self._surviving((_BOS,)))


def estimate_phone_lm(sentences: Iterable[Iterable[int]], options: PhoneLmOptions | None = None) -> PhoneLm:
    """Kaldi chain's phone LM of ``sentences`` (sequences of phone ids > 0)."""
    estimator = PhoneLmEstimator(options)
    for phones in sentences:
        estimator.add(phones)
    return estimator.estimate()
