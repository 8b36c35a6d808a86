"""Decoding with an end-to-end system (stage 10) into a decode directory that ``asrhybrid score`` reads:
``hyp.txt`` (``utt words`` lines) and ``decode.json`` (the search, counts, failures with reasons, speed).

Searches for CTC: ``greedy``; ``beam``, our prefix beam search with optional word n-gram fusion
(asrhybrid.e2e.search); ``flashlight``, flashlight-text's lexicon decoder over a KenLM ARPA (the words of
the ARPA spelled in the system's tokens). For RNN-T: ``greedy`` and ``beam`` (icefall's modified beam
search, with the same optional fusion). For LAS: ``greedy`` and ``beam`` (joint CTC/attention for a model
with a CTC head; its n-best rescored with length normalisation and the optional LM, or the LM in the search). An utterance with no frames fails and is counted; the others go on.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from asrhybrid.data.manifests import load_cuts
from asrhybrid.decode.rescore import open_lm
from asrhybrid.decode.scores import Scores
from asrhybrid.determinism import intra_op_threads
from asrhybrid.e2e.ctc import greedy_ctc
from asrhybrid.e2e.data import e2e_batches
from asrhybrid.e2e.las import greedy_las, rescore_nbest
from asrhybrid.e2e.rnnt import modified_beam_search, rnnt_greedy
from asrhybrid.e2e.search import FlashlightDecoder, WordFusion, prefix_beam_search
from asrhybrid.e2e.tokens import TokenSet
from asrhybrid.e2e.train import load_e2e
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.jobs import InJob, JobsConfig, run_jobs, split_jobs, unfinished
from asrhybrid.outputs import atomic_output, resume_or_clear, write_text_atomic

log = logging.getLogger(__name__)

METHODS = ("greedy", "beam", "flashlight")


@dataclass
class E2EDecodeConfig:
    method: str = "beam"
    beam: int = 16  # prefixes kept (flashlight: hypotheses)
    token_beam: float = 12.0  # per frame, tokens this far below the best are not tried
    alpha: float = 0.5  # LM weight (natural log), Deep Speech's alpha
    beta: float = 1.0  # word bonus, Deep Speech's beta
    max_symbols: int = 3  # RNN-T: tokens a frame (greedy and beam)
    max_duration: float = 120.0
    ctc_weight: float | None = None  # LAS beam: CTC's share of the joint score (None: the training's ctc_weight)
    length_bonus: float = 0.0  # LAS beam: added per token
    lm_fusion: str = "rescore"  # LAS beam with an LM: rescore (the paper's n-best rescoring) or shallow (in the search)
    blank_penalty: float = 0.0  # RNN-T: taken from blank's logit at every frame (sherpa's): fewer deletions

    def __post_init__(self):
        if self.max_symbols < 1:
            raise ConfigError("max_symbols must be at least 1")
        if self.lm_fusion not in ("rescore", "shallow"):
            raise ConfigError(f"lm_fusion '{self.lm_fusion}': rescore or shallow")
        if self.ctc_weight is not None and not 0.0 <= self.ctc_weight < 1.0:
            raise ConfigError(f"ctc_weight {self.ctc_weight}: in [0, 1)")
        if self.blank_penalty < 0:
            raise ConfigError(f"blank_penalty {self.blank_penalty}: at least 0")
        if self.method not in METHODS:
            raise ConfigError(f"end-to-end search '{self.method}': one of {', '.join(METHODS)}")


def arpa_words(path: Path) -> list[str]:
    """The unigrams of an ARPA file but <s>, </s> and <unk>."""
    words, section = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                section = line
                continue
            if section == "\\1-grams:" and line:
                word = line.split()[1]
                if word not in ("<s>", "</s>", "<unk>", "<UNK>"):
                    words.append(word)
    return words


def _lm_scorer(lm: Path | None):
    if lm is None:
        return None
    return open_lm(lm, {})


def _ctc_searcher(cfg: E2EDecodeConfig, tokens, lm: Path | None):
    """log-probabilities [T, V] (numpy) -> words."""
    if cfg.method == "greedy":
        return lambda lp: tokens.words(greedy_ctc(torch.from_numpy(lp), len(lp)))
    if cfg.method == "flashlight":
        if lm is None or Path(lm).suffix != ".arpa":
            raise ConfigError("the flashlight search needs an ARPA LM (its words make the lexicon)")
        words = [w for w in arpa_words(Path(lm)) if not tokens.unknown_characters(w)]
        return FlashlightDecoder(tokens, lm, words, cfg.alpha, cfg.beta, beam=cfg.beam)
    scorer = _lm_scorer(lm)

    def search(lp: np.ndarray) -> list[str]:
        fusion = WordFusion(tokens, scorer, cfg.alpha if scorer else 0.0, cfg.beta if scorer else 0.0)
        best = prefix_beam_search(lp, fusion, beam=cfg.beam, token_beam=cfg.token_beam)
        return tokens.words(list(best[0][0])) if best else []

    return search


def _rnnt_searcher(cfg: E2EDecodeConfig, tokens, model, lm: Path | None):
    """encodings [T, C] -> words."""
    if cfg.method == "flashlight":
        raise ConfigError("flashlight's decoder is a CTC search: RNN-T decodes with greedy or beam")
    if cfg.method == "greedy":
        return lambda enc: tokens.words(rnnt_greedy(model, enc, cfg.max_symbols, cfg.blank_penalty))
    scorer = _lm_scorer(lm)

    def search(enc: torch.Tensor) -> list[str]:
        fusion = WordFusion(tokens, scorer, cfg.alpha, cfg.beta) if scorer is not None else None
        return tokens.words(modified_beam_search(model, enc, cfg.beam, fusion, cfg.max_symbols, cfg.blank_penalty))

    return search


def _las_searcher(cfg: E2EDecodeConfig, tokens, model, lm: Path | None):
    """encodings [U, C] -> words: greedy, or beam search (joint CTC/attention where ``ctc_weight`` > 0) whose
    n-best (``beam`` of them) is rescored with the paper's length normalisation and, with an LM, lambda =
    ``alpha``; or, with ``lm_fusion: shallow``, the LM (weight ``alpha``, word bonus ``beta``) in the search."""
    if cfg.method == "flashlight":
        raise ConfigError("flashlight's decoder is a CTC search: LAS decodes with greedy or beam")
    if cfg.method == "greedy":
        return lambda enc: tokens.words(greedy_las(model, enc))
    ctc_weight = model.ctc_weight if cfg.ctc_weight is None else cfg.ctc_weight
    if ctc_weight > 0 and model.ctc is None:
        raise ConfigError(f"ctc_weight {ctc_weight}: this LAS was trained without a CTC head (model.ctc_weight 0)")
    scorer = _lm_scorer(lm)

    def search(enc: torch.Tensor) -> list[str]:
        if scorer is not None and cfg.lm_fusion == "shallow":
            fusion = WordFusion(tokens, scorer, cfg.alpha, cfg.beta)
            best = model.beam_search(enc, cfg.beam, 1, ctc_weight, cfg.length_bonus, fusion)
            return tokens.words(best[0][0]) if best else []
        nbest = model.beam_search(enc, cfg.beam, cfg.beam, ctc_weight, cfg.length_bonus)
        return tokens.words(rescore_nbest(nbest, tokens.words, scorer, cfg.alpha if scorer else 0.0))

    return search


def _has_frames(cut) -> bool:  # a named function: Lhotse warns on lambdas
    return bool(cut.num_frames)


def _outputs(model, system: str, batch, device) -> list:
    """Per utterance of the batch: the CTC log-posteriors [T, V] (float64 numpy), or the encoder's output."""
    if system == "ctc":
        log_probs, out_lens = model(batch.feats.to(device), batch.feat_lens.to(device))
        return [lp[: int(n)].double().numpy() for lp, n in zip(log_probs.cpu(), out_lens.cpu())]
    enc, enc_lens = model.encode(batch.feats.to(device), batch.feat_lens.to(device))[:2]
    return [e[: int(n)] for e, n in zip(enc, enc_lens)]


def _load_system(exp_dir: Path, cuts_path: Path | str, device: str):
    """(model, trained system, tokens, cuts, normalizer) of a trained system over a cuts manifest (the speakers'
    statistics, with ``cmvn: speaker``, span all the cuts)."""
    model, trained = load_e2e(exp_dir, device)
    cuts = load_cuts(cuts_path)
    return model, trained, TokenSet(exp_dir / "tokens"), cuts, trained.normalizer(cuts, cuts_path)


@dataclass(frozen=True)
class CtcSystemScores:
    """A CTC system's log-posteriors [T, V] of the cuts, divided by ``acwt`` (the search over HLG sees them at
    scale 1, see asrhybrid.e2e.hlg): a score source of asrhybrid.decode.scores. An utterance without frames gets a
    [0, V] matrix, which the decoder reports. The speakers' statistics, with ``cmvn: speaker``, span all the cuts."""

    path: Path
    cuts: Path
    num_outputs: int  # its tokens
    acwt: float = 1.0
    max_duration: float = 120.0
    kind = "ctc"

    def scores(self, job: int, nj: int, device: str = "cpu") -> Scores:
        model, trained, tokens, cuts, normalizer = _load_system(Path(self.path), self.cuts, device)
        if trained.system != "ctc":
            raise DataError([f"{self.path}: a {trained.system} system; WFST decoding over HLG needs a CTC system"])
        mine = cuts.filter(InJob(job, nj))
        for cut in mine:
            if not cut.num_frames:
                yield cut.id, np.zeros((0, trained.num_outputs), dtype=np.float32), float(cut.duration)
        with torch.no_grad():
            for batch in e2e_batches(mine.filter(_has_frames), tokens, normalizer, self.max_duration, None):
                for utt, lp, seconds in zip(batch.ids, _outputs(model, "ctc", batch, device), batch.durations):
                    yield utt, lp.astype(np.float32) / self.acwt, seconds


def decode_e2e(
    exp_dir: Path | str,
    cuts_path: Path | str,
    out_dir: Path | str,
    cfg: E2EDecodeConfig,
    lm: Path | str | None = None,
    device: str = "cpu",
    nj: int = 1,
    engine: JobsConfig | None = None,
    resume_key: str | None = None,
) -> dict:
    """Decode the cuts with a trained system into ``out_dir`` (hyp.txt, decode.json) as ``nj`` jobs on ``engine``
    (asrhybrid.jobs): job ``n`` writes ``split<nj>/hyp.n.txt`` and its counts, joined in job order when all
    have finished (kept for a re-run under the same ``resume_key``). ``seconds`` and the real-time factor are
    the jobs' decoding time summed (per core)."""
    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    engine = engine or JobsConfig()
    split = out_dir / f"split{nj}"
    resume_or_clear(split, resume_key)
    shared = {"exp_dir": exp_dir, "cuts_path": Path(cuts_path), "split_dir": split, "cfg": cfg, "device": device}
    jobs = split_jobs("decode-e2e", decode_e2e_job, nj, {**shared, "lm": Path(lm) if lm else None})
    todo = unfinished(jobs, lambda j: split / f".job.{j}.json", str(out_dir))
    run_jobs(todo, engine.on_device(device), out_dir / "log", desc=f"decode-e2e {out_dir.name}")
    counts = [json.loads((split / f".job.{j}.json").read_text()) for j in range(1, nj + 1)]
    with atomic_output(out_dir / "hyp.txt") as tmp, open(tmp, "wb") as out:
        for j in range(1, nj + 1):
            out.write((split / f"hyp.{j}.txt").read_bytes())
    failed = [f for c in counts for f in c["failed"]]
    seconds, audio = sum(c["seconds"] for c in counts), sum(c["audio_seconds"] for c in counts)
    summary = {
        "system": counts[0]["system"],
        "search": {**asdict(cfg), "lm": str(lm) if lm else None},
        "utterances": sum(c["utterances"] for c in counts),
        "failed": failed,
        "frames": sum(c["frames"] for c in counts),
        "nj": nj,
        "seconds": round(seconds, 2),
        "real_time_factor": round(seconds / max(audio, 1e-9), 4),
    }
    write_text_atomic(out_dir / "decode.json", json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(split)
    return summary


def decode_e2e_job(
    exp_dir: Path,
    cuts_path: Path,
    split_dir: Path,
    cfg: E2EDecodeConfig,
    lm: Path | None,
    device: str,
    job: int,
    nj: int,
) -> dict:
    """Job ``job`` of ``nj`` of :func:`decode_e2e`: ``split_dir/hyp.job.txt``, then its counts (``.job.job.json``)."""
    with intra_op_threads(1 if device == "cpu" and nj > 1 else None):
        model, trained, tokens, cuts, normalizer = _load_system(exp_dir, cuts_path, device)
        system = trained.system
        if system == "ctc":
            search = _ctc_searcher(cfg, tokens, lm)
        elif system == "rnnt":
            search = _rnnt_searcher(cfg, tokens, model, lm)
        else:
            search = _las_searcher(cfg, tokens, model, lm)
        mine = cuts.filter(InJob(job, nj))
        failed = [{"utt": c.id, "reason": "no frames"} for c in mine if not c.num_frames]
        lines, frames, audio, start = [], 0, 0.0, time.perf_counter()
        with torch.no_grad():
            for batch in e2e_batches(mine.filter(_has_frames), tokens, normalizer, cfg.max_duration, None):
                outputs = _outputs(model, system, batch, device)
                audio += sum(batch.durations)
                for utt, out, T in zip(batch.ids, outputs, batch.feat_lens):
                    words = search(out)
                    lines.append(f"{utt} {' '.join(words)}".rstrip() + "\n")
                    frames += int(T)
        seconds = time.perf_counter() - start
    for f in failed:
        log.error("%s: %s", f["utt"], f["reason"])
    write_text_atomic(split_dir / f"hyp.{job}.txt", "".join(lines))
    counts = {
        "system": system,
        "utterances": len(lines) + len(failed),
        "failed": failed,
        "frames": frames,
        "audio_seconds": audio,
        "seconds": seconds,
    }
    write_text_atomic(split_dir / f".job.{job}.json", json.dumps(counts) + "\n")
    return counts
