"""The scoring grid's choice of setting (asrhybrid.score.grid.chosen_setting): the fewest errors, and among
settings with as few, the middle of them, checked against every tie pattern of a small grid by brute force."""

from __future__ import annotations

import itertools

from asrhybrid.score.grid import GridResult, chosen_setting
from asrhybrid.score.wer import ErrorCounts

LMWTS, WIPS = (7, 8, 9, 10, 11), (0.0, 0.5, 1.0)


def _grid(errors: dict[tuple[int, float], int]) -> list[GridResult]:
    return [GridResult(m, w, ErrorCounts(ref_words=100, subs=errors[(m, w)]), []) for m in LMWTS for w in WIPS]


def test_a_unique_minimum_is_chosen_wherever_it_is():
    for m, w in itertools.product(LMWTS, WIPS):
        errors = {(a, b): 5 + abs(a - 9) for a in LMWTS for b in WIPS}
        errors[(m, w)] = 1
        best = chosen_setting(_grid(errors))
        assert (best.lmwt, best.wip) == (m, w)


def test_ties_go_to_the_middle_of_the_tied_settings():
    flat = chosen_setting(_grid({(a, b): 3 for a in LMWTS for b in WIPS}))
    assert (flat.lmwt, flat.wip) == (9, 0.5)  # the whole grid ties: its centre
    run = {(a, b): 3 if a >= 8 and b == 0.0 else 4 for a in LMWTS for b in WIPS}
    best = chosen_setting(_grid(run))
    assert (best.lmwt, best.wip) == (9, 0.0)  # LMWT 8-11 at WIP 0 tie: 9 and 10 are as central, the lower wins
    # brute force over every tied subset of one WIP row: the chosen one is a tied setting nearest their mean
    for mask in range(1, 2 ** len(LMWTS)):
        tied = [m for k, m in enumerate(LMWTS) if mask >> k & 1]
        best = chosen_setting(_grid({(a, b): 2 if a in tied and b == 1.0 else 9 for a in LMWTS for b in WIPS}))
        positions = [LMWTS.index(m) for m in tied]
        centre = sum(positions) / len(positions)
        nearest = min(abs(p - centre) for p in positions)
        assert best.wip == 1.0 and best.lmwt in tied
        assert abs(LMWTS.index(best.lmwt) - centre) == nearest
        assert best.lmwt == min(m for m in tied if abs(LMWTS.index(m) - centre) == nearest)
