"""Alignment generation: ``asrhybrid align`` (Kaldi alignments, CTM, Praat TextGrid), like the Montreal Forced Aligner.

From transition ids to phone segments (a phone starts at a transition id that
is the start of a phone and not a self-loop: with Kaldi's reordered HMMs the
first frame of each state is its forward transition), then to words by
matching the transcript's pronunciations (phones/align_lexicon.txt, Kaldi's
lattice-align-words-lexicon idea) against the phone sequence, skipping
optional silence. Times are frame index x frame shift.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lhotse import load_manifest
from tqdm import tqdm

from asrhybrid.align.graphs import phone_instances
from asrhybrid.errors import DataError
from asrhybrid.recipe.outputs import Completion, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class Segment:
    label: str
    start: int  # frame
    end: int  # frame, exclusive


def phone_segments(tids: list[int], arrays: tuple[np.ndarray, np.ndarray], phone_names: dict[int, str]) -> list[Segment]:
    """Phone segments of an alignment; ``arrays`` from asrhybrid.align.graphs.transition_arrays."""
    return [Segment(phone_names[phone], begin, end) for _, phone, _, begin, end in phone_instances(tids, *arrays)]


def word_segments(phones: list[Segment], words: list[str], prons: dict[str, list[list[str]]], optional_silence: str,
                  utt: str) -> list[Segment]:
    """Match the transcript's words to the phone segments (silence between words skipped)."""
    labels = [p.label for p in phones]

    def match(wi: int, pi: int) -> list[Segment] | None:
        while pi < len(labels) and labels[pi] == optional_silence:
            pi += 1
        if wi == len(words):
            return [] if pi == len(labels) else None
        for pron in prons.get(words[wi], []):
            if labels[pi : pi + len(pron)] == pron:
                rest = match(wi + 1, pi + len(pron))
                if rest is not None:
                    return [Segment(words[wi], phones[pi].start, phones[pi + len(pron) - 1].end)] + rest
        return None

    result = match(0, 0)
    if result is None:
        raise DataError([f"utterance '{utt}': its phone alignment does not spell its transcript (lexicon mismatch?)"])
    return result


def read_align_lexicon(lang_dir: Path) -> dict[str, list[list[str]]]:
    prons: dict[str, list[list[str]]] = {}
    for line in (lang_dir / "phones" / "align_lexicon.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            prons.setdefault(fields[0], []).append(fields[2:])
    return prons


def base_phone(name: str) -> str:
    """SIL_B -> SIL, AH1_E -> AH1 (word-position suffixes are not phones for a reader)."""
    return name[:-2] if name[-2:] in ("_B", "_E", "_I", "_S") else name


def textgrid(duration: float, tiers: dict[str, list[tuple[float, float, str]]]) -> str:
    """A Praat TextGrid (long text format) with interval tiers; gaps become empty intervals."""
    def fill(items):
        out, t = [], 0.0
        for start, end, label in items:
            if start > t + 1e-9:
                out.append((t, start, ""))
            out.append((start, end, label))
            t = end
        if t < duration - 1e-9:
            out.append((t, duration, ""))
        return out

    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0", f"xmax = {duration:.3f}",
             "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
    for k, (name, items) in enumerate(tiers.items(), start=1):
        intervals = fill(items)
        lines += [f"    item [{k}]:", '        class = "IntervalTier"', f'        name = "{name}"', "        xmin = 0",
                  f"        xmax = {duration:.3f}", f"        intervals: size = {len(intervals)}"]
        for i, (start, end, label) in enumerate(intervals, start=1):
            text = label.replace('"', '""')
            lines += [f"        intervals [{i}]:", f"            xmin = {start:.3f}", f"            xmax = {end:.3f}",
                      f'            text = "{text}"']
    return "\n".join(lines) + "\n"


def read_textgrid_tiers(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """The interval tiers of a long-format TextGrid (what we write; enough for tests and round trips)."""
    tiers: dict[str, list[tuple[float, float, str]]] = {}
    current, interval = None, {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("name = "):
            current = line.split("=", 1)[1].strip().strip('"')
            tiers[current] = []
        elif line.startswith(("xmin = ", "xmax = ")) and current is not None and raw.startswith("            "):
            interval[line[:4]] = float(line.split("=", 1)[1])
        elif line.startswith("text = ") and current is not None:
            tiers[current].append((interval["xmin"], interval["xmax"], line.split("=", 1)[1].strip()[1:-1]))
    return tiers


def write_alignment_table(out_dir: Path, alignments: dict[str, list[int]]) -> None:
    """``ali.ark`` + ``ali.scp`` (Kaldi int32-vector table), written under temporary names, then renamed."""
    import kaldi_native_io as kio

    ark, scp = out_dir / "ali.ark", out_dir / "ali.scp"
    tmp_ark, tmp_scp = out_dir / f".tmp{os.getpid()}.writer.ali.ark", out_dir / f".tmp{os.getpid()}.writer.ali.scp"
    with kio.Int32VectorWriter(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
        for utt in sorted(alignments):
            writer.write(utt, alignments[utt])
    scp_text = tmp_scp.read_text().replace(str(tmp_ark), str(ark.resolve()))
    os.replace(tmp_ark, ark)
    write_text_atomic(scp, scp_text)
    tmp_scp.unlink()


def align_corpus(cuts_path: Path | str, lang_dir: Path | str, model_dir: Path | str, out_dir: Path | str,
                 backend: str = "auto", force: bool = False) -> dict:
    """Align every cut with the flat-start model; write ali.{ark,scp}, {word,phone}.ctm, textgrid/<utt>.TextGrid."""
    from asrhybrid.align.flat_start import load_flat_start_model
    from asrhybrid.align.graphs import GraphCompiler, align, transition_arrays
    from asrhybrid.graph.mkgraph import load_model

    cuts_path, lang_dir, model_dir, out_dir = map(Path, (cuts_path, lang_dir, model_dir, out_dir))
    done = Completion(out_dir, "align", {"backend": backend},
                      inputs={"cuts": cuts_path, "lang": lang_dir, "model": model_dir})
    if done.is_done(force):
        log.info("%s: alignments already written", out_dir)
        return {}
    tree, trans_model = load_model(model_dir)
    model, mean, std, log_prior = load_flat_start_model(model_dir)
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    arrays = transition_arrays(trans_model)
    compiler = GraphCompiler(lang_dir, tree, trans_model)
    phone_names = {int(i): s for s, i in (line.split() for line in (lang_dir / "phones.txt").read_text().splitlines())}
    optional_silence = (lang_dir / "phones" / "optional_silence.txt").read_text().strip()
    prons = read_align_lexicon(lang_dir)

    cuts = list(load_manifest(cuts_path))
    graphs, loglikes = [], []
    with torch.no_grad():
        for cut in tqdm(cuts, desc="align: scores", unit="utt", leave=False):
            graphs.append(compiler.compile(cut.supervisions[0].text))
            feats = torch.from_numpy(((cut.load_features() - mean) / std).astype(np.float32))
            loglikes.append(model.log_posteriors(feats).numpy() - log_prior)
    results = align(graphs, loglikes, tid_to_pdf, backend=backend, beam=20.0, retry_beam=200.0)

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "textgrid").mkdir(exist_ok=True)
    alignments, failed, word_ctm, phone_ctm = {}, [], [], []
    for cut, result in zip(cuts, results):
        if result is None:
            failed.append(cut.id)
            continue
        tids = result[0]
        alignments[cut.id] = tids
        shift = cut.features.frame_shift
        phones = phone_segments(tids, arrays, phone_names)
        words = word_segments(phones, [w if w in prons else compiler.oov for w in cut.supervisions[0].text.split()],
                              prons, optional_silence, cut.id)
        for seg in words:
            word_ctm.append(f"{cut.id} 1 {seg.start * shift:.2f} {(seg.end - seg.start) * shift:.2f} {seg.label}\n")
        for seg in phones:
            phone_ctm.append(f"{cut.id} 1 {seg.start * shift:.2f} {(seg.end - seg.start) * shift:.2f} {base_phone(seg.label)}\n")
        tiers = {
            "words": [(s.start * shift, s.end * shift, s.label) for s in words],
            "phones": [(s.start * shift, s.end * shift, base_phone(s.label)) for s in phones],
        }
        write_text_atomic(out_dir / "textgrid" / f"{cut.id}.TextGrid", textgrid(len(tids) * shift, tiers))
    write_alignment_table(out_dir, alignments)
    write_text_atomic(out_dir / "word.ctm", "".join(word_ctm))
    write_text_atomic(out_dir / "phone.ctm", "".join(phone_ctm))
    if failed:
        write_text_atomic(out_dir / "failed.txt", "".join(f"{u}\n" for u in failed))
        log.warning("%d utterance(s) could not be aligned (listed in %s): %s", len(failed), out_dir / "failed.txt",
                    " ".join(failed[:10]))
    log.info("align %s: %d utterances aligned, %d failed", out_dir, len(alignments), len(failed))
    done.mark_done()
    return {"aligned": len(alignments), "failed": failed}
