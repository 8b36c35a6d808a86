"""Kaldi's scoring grid over a decode directory's lattices (local/score.sh, steps/scoring/score_kaldi_wer.sh).

For every LM weight ``LMWT`` (default 7..17) and word insertion penalty
``WIP`` (0, 0.5, 1.0), each lattice's best path under ``LMWT x graph +
acoustic + WIP x words`` is the hypothesis; ``wer_LMWT_WIP`` holds its
``%WER`` and ``%SER`` lines, ``scoring/LMWT_WIP.txt`` the hypotheses, and
``best_wer`` the best line with the file it came from: the fewest errors, and among settings with as few
the one nearest the middle of them on the grid (a small dev set often ties over the whole grid, and the edge
of a plateau is the setting most likely to be off it on other data; Kaldi's best_wer.sh takes the first line
sort gives, which is an accident of file names). With ``params``
(the LMWT and WIP picked on a dev set, its ``scoring.json``) the setting is
applied instead of picked (icefall's and Kaldi's honest test number), and
``chosen_wer`` and ``scoring_chosen.json`` hold it. ``errs-LMWT_WIP.txt`` and ``recogs-LMWT_WIP.txt``
(icefall's) give the per-utterance alignments of the setting used.

Utterances that failed to decode count as hypotheses with no words (every
reference word deleted; ``[PARTIAL]`` on the line) and are listed in
``scoring.json``. Words that are not speech (``<SIL>``, ``<eps>``, ``!SIL``,
``<s>``, ``</s>``) are dropped from hypotheses before scoring.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from asrhybrid.data.manifests import load_cuts
from asrhybrid.decode.corpus import iter_lattices
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.outputs import write_text_atomic
from asrhybrid.score.wer import ErrorCounts, UtteranceScore, errs_text, recogs_text, score

log = logging.getLogger(__name__)

NON_SPEECH = frozenset({"<eps>", "<SIL>", "<sil>", "!SIL", "<s>", "</s>"})
DEFAULT_LMWTS = tuple(range(7, 18))
DEFAULT_WIPS = (0.0, 0.5, 1.0)


@dataclass
class GridResult:
    lmwt: float
    wip: float
    counts: ErrorCounts
    per_utt: list[UtteranceScore]

    @property
    def name(self) -> str:
        return f"{self.lmwt:g}_{self.wip:g}"


def setting_name(lmwt: float, wip: float) -> str:
    return f"{lmwt:g}_{wip:g}"


def grid_hypotheses(
    decode_dir: Path, lmwts: Sequence[float], wips: Sequence[float], bad: list[str] | None = None
) -> dict[tuple[float, float], dict[str, list[str]]]:
    """{(lmwt, wip): {utt: words}} over the decode directory's lattices (each lattice read once; corrupt ones
    are skipped, their errors appended to ``bad``)."""
    words = {i: w for w, i in read_symbol_table(Path(decode_dir) / "words.txt").items()}
    hyps: dict[tuple[float, float], dict[str, list[str]]] = {(l, w): {} for l in lmwts for w in wips}
    for utt, lattice in iter_lattices(decode_dir, bad if bad is not None else []):
        for lmwt in lmwts:
            for wip in wips:
                path = lattice.best_path(lmwt, wip)
                if path is None:
                    continue  # an empty lattice: the utterance counts as having no hypothesis
                hyps[(lmwt, wip)][utt] = [words[w] for w in path.words if words.get(w) not in NON_SPEECH]
    return hyps


def chosen_setting(results: Sequence[GridResult]) -> GridResult:
    """The setting with the fewest errors; among those with as few, the one nearest their centroid in grid
    positions (the index of its LMWT among the grid's LMWTs, of its WIP among its WIPs), then the lowest
    LMWT and WIP."""
    lmwts, wips = sorted({r.lmwt for r in results}), sorted({r.wip for r in results})
    fewest = min(r.counts.errors for r in results)
    tied = [(lmwts.index(r.lmwt), wips.index(r.wip), r) for r in results if r.counts.errors == fewest]
    centre_lmwt = sum(i for i, _, _ in tied) / len(tied)
    centre_wip = sum(j for _, j, _ in tied) / len(tied)
    return min(tied, key=lambda t: ((t[0] - centre_lmwt) ** 2 + (t[1] - centre_wip) ** 2, t[2].lmwt, t[2].wip))[2]


def score_decode_dir(
    decode_dir: Path | str,
    refs: Mapping[str, str],
    lmwts: Sequence[float] = DEFAULT_LMWTS,
    wips: Sequence[float] = DEFAULT_WIPS,
    params: dict | None = None,
) -> dict:
    """Score every setting of the grid; write the files of the module's doc; return scoring.json's content."""
    decode_dir = Path(decode_dir)
    if (decode_dir / "hyp.txt").is_file() and not any(decode_dir.glob("lat.*.gz")):
        return score_hypotheses(decode_dir, refs)
    if params is not None:
        lmwts, wips = [params["lmwt"]], [params["wip"]]
    bad: list[str] = []
    hyps = grid_hypotheses(decode_dir, lmwts, wips, bad)
    for message in bad:
        log.error("%s", message)
    results: list[GridResult] = []
    (decode_dir / "scoring").mkdir(exist_ok=True)
    for (lmwt, wip), by_utt in hyps.items():
        try:
            total, per_utt = score(refs, by_utt)
        except ValueError as e:  # decoded utterances without a reference
            raise ValueError(f"{decode_dir}: {e}") from None
        name = setting_name(lmwt, wip)
        write_text_atomic(
            decode_dir / "scoring" / f"{name}.txt", "".join(f"{u} {' '.join(by_utt[u])}\n" for u in refs if u in by_utt)
        )
        write_text_atomic(decode_dir / f"wer_{name}", f"{total.wer_line()}\n{total.ser_line()}\n")
        results.append(GridResult(lmwt, wip, total, per_utt))
    best = chosen_setting(results)
    line = best.counts.wer_line(str(decode_dir / f"wer_{best.name}"))
    write_text_atomic(decode_dir / ("chosen_wer" if params is not None else "best_wer"), line + "\n")
    write_text_atomic(decode_dir / f"errs-{best.name}.txt", errs_text(best.counts, best.per_utt, str(decode_dir)))
    write_text_atomic(decode_dir / f"recogs-{best.name}.txt", recogs_text(best.per_utt))
    missing = sorted(set(refs) - set(hyps[(best.lmwt, best.wip)]))
    summary = {
        "lmwt": best.lmwt,
        "wip": best.wip,
        "wer": round(best.counts.wer, 4),
        "wer_line": line,
        "chosen_from": params.get("source") if params else None,
        "grid": {r.name: round(r.counts.wer, 4) for r in results},
        "utterances": len(refs),
        "without_hypothesis": missing,
        "corrupt_lattices": bad,
        "failed_decoding": _failed(decode_dir),
    }
    write_text_atomic(
        decode_dir / ("scoring_chosen.json" if params is not None else "scoring.json"),
        json.dumps(summary, indent=1) + "\n",
    )
    return summary


def score_hypotheses(decode_dir: Path, refs: Mapping[str, str]) -> dict:
    """An end-to-end decode directory's ``hyp.txt`` (one search setting, in its decode.json): ``wer``,
    ``best_wer``, ``errs-hyp.txt``, ``recogs-hyp.txt`` and ``scoring.json`` (with the search instead of LMWT/WIP)."""
    hyps = {}
    for line in (decode_dir / "hyp.txt").read_text(encoding="utf-8").splitlines():
        utt, _, words = line.partition(" ")
        hyps[utt] = [w for w in words.split() if w not in NON_SPEECH]
    try:
        total, per_utt = score(refs, hyps)
    except ValueError as e:
        raise ValueError(f"{decode_dir}: {e}") from None
    write_text_atomic(decode_dir / "wer", f"{total.wer_line()}\n{total.ser_line()}\n")
    line = total.wer_line(str(decode_dir / "wer"))
    write_text_atomic(decode_dir / "best_wer", line + "\n")
    write_text_atomic(decode_dir / "errs-hyp.txt", errs_text(total, per_utt, str(decode_dir)))
    write_text_atomic(decode_dir / "recogs-hyp.txt", recogs_text(per_utt))
    try:
        search = json.loads((decode_dir / "decode.json").read_text()).get("search")
    except (OSError, ValueError):
        search = None
    summary = {
        "lmwt": None,
        "wip": None,
        "search": search,
        "wer": round(total.wer, 4),
        "wer_line": line,
        "chosen_from": None,
        "grid": None,
        "utterances": len(refs),
        "without_hypothesis": sorted(set(refs) - set(hyps)),
        "corrupt_lattices": [],
        "failed_decoding": _failed(decode_dir),
    }
    write_text_atomic(decode_dir / "scoring.json", json.dumps(summary, indent=1) + "\n")
    return summary


def _failed(decode_dir: Path) -> list[dict]:
    try:
        return json.loads((decode_dir / "decode.json").read_text()).get("failed", [])
    except (OSError, ValueError):
        return []


def refs_from_cuts(cuts_path: Path | str) -> dict[str, str]:
    """{utt: reference text} of a cuts manifest (one supervision per cut), in order."""
    return {cut.id: " ".join(s.text for s in cut.supervisions) for cut in load_cuts(cuts_path)}
