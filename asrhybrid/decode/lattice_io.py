"""Lattices from elsewhere: Kaldi text CompactLattice archives into a decode directory.

``lattice-from-kaldi`` reads archives such as a real Kaldi system's
(``lattice-copy 'ark:gunzip -c lat.1.gz|' ark,t:-``), checks every lattice
(acyclic; every word in the graph's words.txt; finite costs) and writes a
decode directory (:mod:`asrhybrid.decode.corpus`: ``lat.N.gz`` per archive,
``best.N.jsonl`` with each lattice's best path at LM weight 10, ``words.txt``,
``decode.json``), so that score, rescore and lattice-to-kaldi work on it.
A lattice that fails a check is reported and left out; the others are kept.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from asrhybrid.decode.lattice import WordLattice, read_kaldi_lattices, write_kaldi_lattices
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.outputs import atomic_output, write_text_atomic


def lattice_problem(lattice: WordLattice, words: dict[int, str]) -> str | None:
    """Why a lattice cannot be used with these words; None when it can."""
    for arc in lattice.arcs:
        if arc.word and arc.word not in words:
            return f"word id {arc.word} is not in words.txt"
        if not (math.isfinite(arc.graph) and math.isfinite(arc.acoustic)):
            return f"an arc {arc.src}->{arc.dst} with a cost that is not finite"
    if lattice.arcs and not lattice.final:
        return "no final state"
    return None


def import_kaldi_lattices(archives: list[Path], words_txt: Path, out_dir: Path, acoustic_scale: float = 1.0) -> dict:
    words = {i: w for w, i in read_symbol_table(words_txt).items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, count = [], 0
    for job, archive in enumerate(archives, 1):
        best_lines = []

        def checked(archive=archive, best_lines=best_lines):
            nonlocal count
            bad: list[str] = []
            for utt, lattice in read_kaldi_lattices(archive, bad):
                problem = lattice_problem(lattice, words)
                if problem:
                    failed.append({"utt": utt, "error": f"{archive}: lattice '{utt}': {problem}"})
                    continue
                if acoustic_scale != 1.0:
                    for arc in lattice.arcs:
                        arc.acoustic /= acoustic_scale
                    lattice.final = {s: (g, a / acoustic_scale, t) for s, (g, a, t) in lattice.final.items()}
                path = lattice.best_path(10.0)
                best_lines.append(
                    json.dumps(
                        {
                            "utt": utt,
                            "words": [words[w] for w in path.words] if path else [],
                            "tids": list(path.tids) if path else [],
                            "error": None,
                        }
                    )
                )
                count += 1
                yield utt, lattice
            failed.extend({"utt": None, "error": message} for message in bad)

        with atomic_output(out_dir / f"lat.{job}.gz") as tmp:
            write_kaldi_lattices(tmp, checked())
        write_text_atomic(out_dir / f"best.{job}.jsonl", "".join(line + "\n" for line in best_lines))
    shutil.copyfile(words_txt, out_dir / "words.txt")
    summary = {
        "config": None,
        "imported_from": [str(a) for a in archives],
        "nj": len(archives),
        "utterances": count + len(failed),
        "decoded": count,
        "failed": failed,
    }
    write_text_atomic(out_dir / "decode.json", json.dumps(summary, indent=1) + "\n")
    return summary
