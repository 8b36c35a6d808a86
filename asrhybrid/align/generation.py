"""Alignment generation: ``asrhybrid align`` (Kaldi alignments, CTM, Praat TextGrid), like the Montreal Forced Aligner.

From transition ids to phone segments (a phone starts at a transition id that
is the start of a phone and not a self-loop: with Kaldi's reordered HMMs the
first frame of each state is its forward transition), then to words by
matching the transcript's pronunciations (phones/align_lexicon.txt, Kaldi's
lattice-align-words-lexicon idea) against the phone sequence, skipping
optional silence. Times are frame index x frame shift.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from praatio import textgrid
from praatio.data_classes.interval_tier import IntervalTier
from tqdm import tqdm

from asrhybrid.align.flat_start import load_flat_start_model
from asrhybrid.align.graphs import GraphCompiler, align, phone_instances, transition_arrays
from asrhybrid.data.manifests import frame_blocks, load_cuts, transcript
from asrhybrid.errors import DataError
from asrhybrid.features.cmvn import normalized_features
from asrhybrid.hmm import load_model
from asrhybrid.jobs import InJob, JobsConfig, run_jobs, split_jobs, unfinished
from asrhybrid.kaldi_tables import alignment_table_writer, merge_tables
from asrhybrid.nnet.inference import frame_step, iter_loglikes, load_am
from asrhybrid.outputs import atomic_output, resume_or_clear, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class Segment:
    label: str
    start: int  # frame
    end: int  # frame, exclusive


def phone_segments(
    tids: list[int], arrays: tuple[np.ndarray, np.ndarray], phone_names: dict[int, str]
) -> list[Segment]:
    """Phone segments of an alignment; ``arrays`` from asrhybrid.align.graphs.transition_arrays."""
    return [Segment(phone_names[phone], begin, end) for _, phone, _, begin, end in phone_instances(tids, *arrays)]


def word_segments(
    phones: list[Segment], words: list[str], prons: dict[str, list[list[str]]], optional_silence: str, utt: str
) -> list[Segment]:
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


CtmEntry = tuple[float, float, str]  # start, end (seconds in the recording), label


def read_ctm(path: Path | str) -> dict[str, list[CtmEntry]]:
    """A Kaldi CTM (``recording channel start duration label``) as entries per recording, in file order."""
    out: dict[str, list[CtmEntry]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            raise DataError([f"{path}:{number}: a CTM line has 5 fields (recording channel start duration label)"])
        start, duration = float(fields[2]), float(fields[3])
        out.setdefault(fields[0], []).append((start, start + duration, fields[4]))
    return out


def cut_entries(ctm: dict[str, list[CtmEntry]], cut) -> list[CtmEntry]:
    """The entries of ``cut`` (those starting inside it, on its recording), in seconds from the cut's start."""
    return [
        (s - cut.start, e - cut.start, label)
        for s, e, label in ctm.get(cut.recording_id, [])
        if cut.start - 1e-6 <= s < cut.end - 1e-6
    ]


def _block_scorer(model_dir: Path, am_dir: Path | str | None, num_pdfs: int, cuts_path: Path):
    """(block of cuts -> their [T, num_pdfs] scaled log-likelihoods, feature frames per row of them), from the
    flat-start network or a hybrid AM (normalised as it was trained, over the whole of ``cuts_path``: a
    speaker's statistics span the blocks; a chain AM's rows are every third frame)."""
    if am_dir is not None:
        model, trained = load_am(am_dir)
        if trained.num_outputs != num_pdfs:
            raise ValueError(
                f"{am_dir} has {trained.num_outputs} outputs but the model in {model_dir} has {num_pdfs} "
                "pdfs: not an acoustic model of this tree"
            )
        normalizer = trained.normalizer(load_cuts(cuts_path), cuts_path)

        def score(block):  # in the block's order
            return [loglikes for _, loglikes in iter_loglikes(model, trained, block, normalizer=normalizer)]

        return score, frame_step(trained)

    model, mean, std, log_prior = load_flat_start_model(model_dir)

    def score(block):
        with torch.no_grad():
            return [model.log_posteriors(normalized_features(cut, mean, std)).numpy() - log_prior for cut in block]

    return score, 1


def ctm_line(cut, start: float, end: float, label: str) -> str:
    """Kaldi's CTM convention: the recording, its channel (1-based), the start in the recording (the
    segment's offset added, as utils/convert_ctm.pl does), the duration, the label."""
    channel = cut.channel if isinstance(cut.channel, int) else cut.channel[0]
    return f"{cut.recording_id} {channel + 1} {cut.start + start:.2f} {end - start:.2f} {label}\n"


def write_textgrid(path: Path, duration: float, tiers: dict[str, list[CtmEntry]]) -> None:
    """A Praat TextGrid (long format, through praatio) with one interval tier each; gaps stay empty."""
    duration = round(duration, 3)  # milliseconds throughout: praatio compares the tiers' ends with the grid's
    grid = textgrid.Textgrid(minTimestamp=0.0, maxTimestamp=duration)
    for name, items in tiers.items():
        entries = [(round(s, 3), min(round(e, 3), duration), label) for s, e, label in items]
        grid.addTier(IntervalTier(name, [(s, e, label) for s, e, label in entries if e > s], 0.0, duration))
    with atomic_output(path) as tmp:
        grid.save(str(tmp), format="long_textgrid", includeBlankSpaces=True, reportingMode="error")


def align_corpus(
    cuts_path: Path | str,
    lang_dir: Path | str,
    model_dir: Path | str,
    out_dir: Path | str,
    backend: str = "auto",
    block_frames: int = 20_000,
    am_dir: Path | str | None = None,
    nj: int = 1,
    engine: JobsConfig | None = None,
    resume_key: str | None = None,
) -> dict:
    """Align every cut; write ali.{ark,scp} (transition ids), ali_pdf.{ark,scp}, {word,phone}.ctm, and a TextGrid
    per recording.

    The scores come from the flat-start network of ``model_dir``, or, with ``am_dir``, from that hybrid
    acoustic model (train-am's final.pt, realignment: Kaldi's steps/nnet3/align.sh), through the tree and
    transition model of ``model_dir`` (the tree dir it was trained on). The work is ``nj`` jobs on ``engine``
    (asrhybrid.jobs), a recording's cuts all in one job (its TextGrid is one file); job ``n`` writes
    ``split<nj>/{ali,ali_pdf}.n.{ark,scp}``, ``{word,phone}.n.ctm`` and its counts (``.job.n.json``, last), and
    the tables and CTMs are joined in job order when all have finished (a re-run redoes only the jobs that did
    not finish under the same ``resume_key``; None: start over). Within a job, cuts are streamed from disk in blocks of about ``block_frames`` frames and every
    output is written as it goes (CTM lines in the cuts' order), so memory does not grow with the corpus.
    """
    cuts_path, lang_dir, model_dir, out_dir = map(Path, (cuts_path, lang_dir, model_dir, out_dir))
    split = out_dir / f"split{nj}"
    resume_or_clear(split, resume_key)
    shared = {"cuts_path": cuts_path, "lang_dir": lang_dir, "model_dir": model_dir, "split_dir": split}
    jobs = split_jobs(
        "align",
        align_job,
        nj,
        {
            **shared,
            "textgrid_dir": out_dir / "textgrid",
            "backend": backend,
            "block_frames": block_frames,
            "am_dir": am_dir,
        },
    )
    todo = unfinished(jobs, lambda j: split / f".job.{j}.json", f"align {out_dir}")
    run_jobs(todo, engine or JobsConfig(), out_dir / "log", desc=f"align {out_dir.name}")

    for table in ("ali", "ali_pdf"):
        merge_tables([split / f"{table}.{j}.ark" for j in range(1, nj + 1)], out_dir / f"{table}.ark")
    for ctm in ("word", "phone"):
        with atomic_output(out_dir / f"{ctm}.ctm") as tmp, open(tmp, "wb") as out:
            for j in range(1, nj + 1):
                out.write((split / f"{ctm}.{j}.ctm").read_bytes())
    counts = [json.loads((split / f".job.{j}.json").read_text()) for j in range(1, nj + 1)]
    aligned, failed = sum(c["aligned"] for c in counts), [u for c in counts for u in c["failed"]]
    if failed:
        write_text_atomic(out_dir / "failed.txt", "".join(f"{u}\n" for u in failed))
        log.warning(
            "%d utterance(s) could not be aligned (listed in %s): %s",
            len(failed),
            out_dir / "failed.txt",
            " ".join(failed[:10]),
        )
    shutil.rmtree(split)  # joined: the per-job pieces would double the alignments on disk
    log.info("align %s: %d utterances aligned, %d failed (%d jobs)", out_dir, aligned, len(failed), nj)
    return {"aligned": aligned, "failed": failed}


def recording_of(cut) -> str:
    """An alignment job's key: a recording's cuts in one job (its TextGrid is one file)."""
    return cut.recording_id


def align_job(
    cuts_path: Path,
    lang_dir: Path,
    model_dir: Path,
    split_dir: Path,
    textgrid_dir: Path,
    backend: str,
    block_frames: int,
    am_dir: Path | str | None,
    job: int,
    nj: int,
) -> dict:
    """Job ``job`` of ``nj`` of :func:`align_corpus`: the cuts of its recordings into ``split_dir``."""
    tree, trans_model = load_model(model_dir)
    score_block, step = _block_scorer(model_dir, am_dir, trans_model.num_pdfs, cuts_path)
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    arrays = transition_arrays(trans_model)
    compiler = GraphCompiler(lang_dir, tree, trans_model)
    phone_names = {int(i): s for s, i in (line.split() for line in (lang_dir / "phones.txt").read_text().splitlines())}
    optional_silence = (lang_dir / "phones" / "optional_silence.txt").read_text().strip()
    prons = read_align_lexicon(lang_dir)
    cuts = load_cuts(cuts_path).filter(InJob(job, nj, key=recording_of))

    textgrid_dir.mkdir(parents=True, exist_ok=True)
    failed, aligned = [], 0
    grid: list = [None, 0.0, {}]  # the recording whose TextGrid is being filled: id, duration, tiers

    def flush_grid():
        if grid[0] is not None:
            write_textgrid(
                textgrid_dir / f"{grid[0]}.TextGrid",
                grid[1],
                {name: sorted(items) for name, items in grid[2].items()},
            )

    with (
        alignment_table_writer(split_dir / f"ali.{job}.ark") as write_ali,
        alignment_table_writer(split_dir / f"ali_pdf.{job}.ark") as write_pdf,
        atomic_output(split_dir / f"word.{job}.ctm") as word_tmp,
        atomic_output(split_dir / f"phone.{job}.ctm") as phone_tmp,
        open(word_tmp, "w", encoding="utf-8") as word_ctm,
        open(phone_tmp, "w", encoding="utf-8") as phone_ctm,
    ):
        for block in tqdm(frame_blocks(cuts, block_frames), desc=f"align.{job}", unit="block", leave=False):
            texts = [transcript(cut, cuts_path) for cut in block]
            results = align(
                [compiler.compile(text) for text in texts],
                score_block(block),
                tid_to_pdf,
                backend=backend,
                beam=20.0,
                retry_beam=200.0,
            )
            for cut, text, result in zip(block, texts, results):
                if result is None:
                    failed.append(cut.id)
                    continue
                tids = result[0]
                write_ali(cut.id, tids)
                write_pdf(cut.id, tid_to_pdf[np.asarray(tids, dtype=np.int64)].tolist())
                aligned += 1
                shift = cut.features.frame_shift * step  # seconds per alignment frame
                phones = phone_segments(tids, arrays, phone_names)
                words = word_segments(
                    phones, [w if w in prons else compiler.oov for w in text.split()], prons, optional_silence, cut.id
                )
                word_items = [(seg.start * shift, seg.end * shift, seg.label) for seg in words]
                phone_items = [(seg.start * shift, seg.end * shift, base_phone(seg.label)) for seg in phones]
                word_ctm.writelines(ctm_line(cut, *item) for item in word_items)
                phone_ctm.writelines(ctm_line(cut, *item) for item in phone_items)
                if cut.recording_id != grid[0]:  # one TextGrid per audio file, as the MFA writes
                    flush_grid()
                    grid[:] = [cut.recording_id, cut.recording.duration, {"words": [], "phones": []}]
                grid[2]["words"] += [(cut.start + s, cut.start + e, w) for s, e, w in word_items]
                grid[2]["phones"] += [(cut.start + s, cut.start + e, p) for s, e, p in phone_items]
        flush_grid()
    counts = {"aligned": aligned, "failed": failed}
    write_text_atomic(split_dir / f".job.{job}.json", json.dumps(counts) + "\n")
    return counts
