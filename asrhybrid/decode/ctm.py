"""Word alignment of lattice paths: each lattice's best path (at an LM weight and insertion penalty) as CTM.

The path's transition ids (the CompactLattice strings along it) give the
phone segments (the HMM's phone starts, as the aligner's outputs use them);
the path's words are matched to those phones through the lang's
``phones/align_lexicon.txt`` (Kaldi's lattice-align-words-lexicon), optional
silence between words skipped. The graph dir has all it needs (phones/, the
transition model), so this works on imported Kaldi lattices as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from asrhybrid.align.generation import phone_segments, read_align_lexicon, word_segments
from asrhybrid.align.graphs import transition_arrays
from asrhybrid.decode.corpus import iter_lattices
from asrhybrid.errors import DataError
from asrhybrid.hmm import load_model
from asrhybrid.lang.io import read_symbol_table
from asrhybrid.outputs import atomic_output


def lattice_ctm(
    decode_dir: Path | str,
    graph_dir: Path | str,
    out_ctm: Path | str,
    lmwt: float = 10.0,
    wip: float = 0.0,
    frame_shift: float = 0.01,
    frame_subsampling_factor: int | None = None,
) -> dict:
    """Write ``utt 1 start duration word`` lines (Kaldi's CTM, the utterance as the recording); returns counts.
    A lattice frame is ``frame_subsampling_factor`` feature frames of ``frame_shift`` seconds: by default the
    factor the decode recorded (a chain model's 3; Kaldi's get_ctm.sh reads the model's), else 1."""
    graph_dir = Path(graph_dir)
    if frame_subsampling_factor is None:
        summary = Path(decode_dir) / "decode.json"
        recorded = json.loads(summary.read_text()).get("frame_subsampling_factor") if summary.is_file() else None
        frame_subsampling_factor = int(recorded or 1)
    if frame_subsampling_factor < 1:
        raise DataError([f"frame subsampling factor {frame_subsampling_factor}: at least 1"])
    frame_shift *= frame_subsampling_factor
    _, trans_model = load_model(graph_dir)
    arrays = transition_arrays(trans_model)
    phone_names = {i: p for p, i in read_symbol_table(graph_dir / "phones.txt").items()}
    words = {i: w for w, i in read_symbol_table(Path(decode_dir) / "words.txt").items()}
    prons = read_align_lexicon(graph_dir)
    silence = (graph_dir / "phones" / "optional_silence.txt").read_text().split()[0]
    done, failed = 0, []
    with atomic_output(out_ctm) as tmp, open(tmp, "w", encoding="utf-8") as out:
        bad: list[str] = []
        for utt, lattice in iter_lattices(decode_dir, bad):
            path = lattice.best_path(lmwt, wip)
            if path is None:
                failed.append(f"{utt}: an empty lattice")
                continue
            if max(path.tids, default=0) > trans_model.num_transition_ids:
                raise DataError([f"{utt}: transition id {max(path.tids)} is not in {graph_dir}'s model"])
            phones = phone_segments(list(path.tids), arrays, phone_names)
            try:
                segments = word_segments(phones, [words[w] for w in path.words], prons, silence, utt)
            except DataError as e:
                failed.append(str(e))
                continue
            for s in segments:
                out.write(f"{utt} 1 {s.start * frame_shift:.2f} {(s.end - s.start) * frame_shift:.2f} {s.label}\n")
            done += 1
        failed += bad
    return {"utterances": done, "failed": failed}
