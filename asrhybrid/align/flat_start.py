"""Stage 4: GMM-free flat start (after Senior, Heigold, Bacchiani, Liao 2014).

Iteration 0 aligns every utterance equally along its training graph (Kaldi's
align-equal-compiled). Each iteration then trains a context-independent
network on the current frame targets (pdfs), turns its posteriors into scaled
likelihoods (log posterior - log prior, priors from the alignment's state
counts) and realigns through the training graphs. Per iteration the log gives
the frame cross-entropy, frame accuracy, the share of frames whose target
changed, and how many utterances could not be aligned (they sit out the next
training round and are listed, never dropped silently).

Every finished iteration leaves ``ali.N.ark`` and a checkpoint ``N.pt`` (the
network, the shuffling generator's state, the log so far): a killed run
resumes after its last finished iteration and ends where an uninterrupted run
would have, when the checkpoint was made under the same ``resume_key`` (the
verb's options but the number of iterations, and its inputs; None starts from
scratch).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asrhybrid.align import BACKENDS
from asrhybrid.align.graphs import GraphCompiler, align, equal_alignment, transition_arrays
from asrhybrid.data.manifests import frame_blocks, load_cuts, transcript
from asrhybrid.determinism import fix_training_threads, intra_op_threads
from asrhybrid.errors import ConfigError, DataError
from asrhybrid.features.cmvn import global_mean_std, normalized_features
from asrhybrid.hmm import init_mono_model, load_model
from asrhybrid.jobs import InJob, JobsConfig, run_jobs, split_jobs
from asrhybrid.kaldi_tables import AlignmentTable, alignment_table_writer, iter_alignments, merge_tables
from asrhybrid.lang.io import read_int_list
from asrhybrid.nnet.mlp import SplicedMLP, splice
from asrhybrid.nnet.priors import log_priors
from asrhybrid.outputs import atomic_output, last_checkpoint, resume_or_clear, write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class FlatStartConfig:
    iterations: int = 5
    epochs: int = 3  # training passes over the frames per iteration
    # Frames of context each side. A spliced network lets boundaries drift by up to its
    # context at no cost in frame accuracy; on synth (test set, word boundaries vs eSpeak's
    # times) context 5 gave 31.3 ms mean error, 2: 32.3, 1: 19.8, 0: 17.5 (76% within 20 ms).
    context: int = 0
    hidden: int = 256
    layers: int = 2
    lr: float = 1e-3
    lr_decay: float = 0.85  # per iteration: later iterations refine, so the alignment settles
    batch_frames: int = 512
    # The corpus is read from disk block by block, so memory does not grow with the corpus: training
    # draws utterances through a shuffle buffer of 10k cuts (a global shuffle up to 10k utterances) and
    # shuffles the frames of blocks of this many frames (about 17 min of speech; features only, ~70 MB),
    block_frames: int = 100_000
    # and realignment scores and aligns blocks of this many (its memory is about 11 kB a frame on synth:
    # scores, padded batches, back-pointers; 20k frames kept a 0.25 h flat start at 640 MB, 200k at 1.1 GB).
    align_block_frames: int = 20_000
    seed: int = 0
    num_threads: int = 2  # intra-op threads: fixed, so a seed trains the same model on any machine (determinism.py)
    # Iteration 0 prefers equal-alignment paths that begin and end in silence: with the
    # optional silence left out, the first phone took the leading silence, and on synth the
    # networks learnt word-initial stops as silence for good (words started ~55 ms early).
    edge_silence: bool = True
    backend: str = "auto"  # kaldi, k2 or torch; auto: the device's default (asrhybrid.align.graphs.default_backend)
    # Kaldi's nnet alignment beams are 10/40; the first networks of a flat start are
    # weak, and with those beams 4-7% of synth utterances failed to align early on.
    beam: float = 20.0
    retry_beam: float = 200.0


class _Corpus:
    """The training cuts, streamed from disk in blocks of about ``max_frames`` frames: (utterance, normalised
    features, transcript). Nothing proportional to the corpus stays in memory."""

    def __init__(self, cuts_path: Path, mean: np.ndarray, std: np.ndarray, only: InJob | None = None):
        self.path, self.mean, self.std = cuts_path, mean, std
        self.cuts = load_cuts(cuts_path)  # lazy; a missing file or an empty set is a clear error here
        if only is not None:  # one job's share (realignment)
            self.cuts = self.cuts.filter(only)

    def _shuffled(self, generator, window: int):
        """The cuts through a shuffle buffer of ``window`` cuts (their descriptions, not their features): a
        global shuffle for corpora of up to ``window`` utterances, a local one beyond (Lhotse's samplers do so)."""
        buffer = []
        for cut in self.cuts:
            buffer.append(cut)
            if len(buffer) >= window:
                k = int(torch.randint(len(buffer), (1,), generator=generator))
                buffer[k], buffer[-1] = buffer[-1], buffer[k]
                yield buffer.pop()
        while buffer:
            k = int(torch.randint(len(buffer), (1,), generator=generator))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()

    def blocks(self, max_frames: int, generator=None, window: int = 10_000):
        """Blocks in the manifest's order, or shuffled through a buffer when a ``generator`` is given."""
        for block in frame_blocks(self.cuts if generator is None else self._shuffled(generator, window), max_frames):
            utterances = []
            for cut in block:
                text = transcript(cut, self.path)
                if not text.strip():
                    raise DataError([f"cut '{cut.id}' ({self.path}): empty transcript"])
                utterances.append((cut.id, normalized_features(cut, self.mean, self.std), text))
            yield utterances


def _train(
    model,
    corpus: _Corpus,
    alignments: AlignmentTable,
    tid_to_pdf: np.ndarray,
    cfg: FlatStartConfig,
    generator,
    lr: float,
    num_pdfs: int,
) -> tuple[float, float, np.ndarray]:
    """Cross-entropy on the aligned utterances' frames, shuffled within blocks; returns (mean CE, frame accuracy)
    of the last epoch and the pdf counts of the targets (for the priors)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    counts = np.zeros(num_pdfs)
    for epoch in range(cfg.epochs):
        loss_sum = correct = total = 0.0
        for block in corpus.blocks(cfg.block_frames, generator):  # utterances shuffled, then frames in a block
            aligned = [(feats, alignments[utt]) for utt, feats, _ in block if utt in alignments]
            if not aligned:
                continue
            x = torch.cat([splice(feats, cfg.context) for feats, _ in aligned])
            y = torch.cat([torch.as_tensor(tid_to_pdf[np.asarray(ali)]) for _, ali in aligned])
            if epoch == 0:
                counts += np.bincount(y.numpy(), minlength=num_pdfs)
            order = torch.randperm(len(y), generator=generator)
            for i in range(0, len(y), cfg.batch_frames):
                idx = order[i : i + cfg.batch_frames]
                logits = model(x[idx])
                loss = torch.nn.functional.cross_entropy(logits, y[idx], reduction="sum")
                optimizer.zero_grad()
                (loss / len(idx)).backward()
                optimizer.step()
                loss_sum += loss.item()
                correct += (logits.argmax(-1) == y[idx]).sum().item()
            total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1), counts


def _equal_alignments(corpus, compiler, tid_to_phone, lang_dir: Path, cfg: FlatStartConfig, out_ark: Path) -> int:
    """Iteration 0: every utterance's graph aligned equally over its frames (silence at the edges with
    ``edge_silence``) into ``out_ark``; returns the number of utterances."""
    silence = np.zeros(len(tid_to_phone), dtype=bool)
    silence[1:] = np.isin(tid_to_phone[1:], read_int_list(lang_dir / "phones" / "silence.int"))
    prefer = (lambda tids: silence[tids[0]] and silence[tids[-1]]) if cfg.edge_silence else None
    failed, num_utts = [], 0
    with alignment_table_writer(out_ark) as write:
        for block in tqdm(corpus.blocks(cfg.align_block_frames), desc="equal alignment", unit="block", leave=False):
            for utt, feats, text in block:
                ali = equal_alignment(compiler.compile(text), feats.shape[0], seed=cfg.seed + num_utts, prefer=prefer)
                write(utt, ali) if ali else failed.append(utt)
                num_utts += 1
    log.info(
        "iteration 0: equal alignment of %d utterances, %d failed (too short for their graphs)%s",
        num_utts - len(failed),
        len(failed),
        f": {' '.join(failed[:10])}" if failed else "",
    )
    return num_utts


def _realign(
    exp_dir: Path,
    cuts_path: Path,
    lang_dir: Path,
    cmvn_ark: Path,
    cfg: FlatStartConfig,
    it: int,
    nj: int,
    engine: JobsConfig,
):
    """One realignment pass with the network of ``exp_dir/realign.<it>.pt`` as ``nj`` jobs on ``engine`` into
    ``ali.<it>.ark`` (the jobs' tables joined in job order): (failed utterances, aligned count, frames compared,
    frames whose pdf changed, frames whose phone changed)."""
    split = exp_dir / f"ali.{it}.split{nj}"
    resume_or_clear(split, None)  # an iteration's jobs are redone whole: its network is the one just trained
    shared = {"exp_dir": exp_dir, "cuts_path": cuts_path, "lang_dir": lang_dir, "cmvn_ark": cmvn_ark, "cfg": cfg}
    jobs = split_jobs(f"realign.{it}", realign_job, nj, {**shared, "it": it}, lambda j: {"out_ark": split / f"{j}.ark"})
    results = run_jobs(jobs, engine, exp_dir / "log", desc=f"realign {it}")
    merge_tables([split / f"{j}.ark" for j in range(1, nj + 1)], exp_dir / f"ali.{it}.ark")
    shutil.rmtree(split)
    counts = [results[job.name] for job in jobs]
    failed = [u for c in counts for u in c["failed"]]
    return failed, *(sum(c[k] for c in counts) for k in ("aligned", "frames", "changed_pdf", "changed_phone"))


def realign_job(
    exp_dir: Path,
    cuts_path: Path,
    lang_dir: Path,
    cmvn_ark: Path,
    cfg: FlatStartConfig,
    it: int,
    out_ark: Path,
    job: int,
    nj: int,
) -> dict:
    """Job ``job`` of ``nj`` of iteration ``it``'s realignment: its utterances into ``out_ark``; returns its
    counts (failed utterances, aligned, frames compared with iteration ``it - 1``, frames whose pdf or phone
    changed)."""
    tree, trans_model = load_model(exp_dir)
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    tid_to_phone, _ = transition_arrays(trans_model)
    compiler = GraphCompiler(lang_dir, tree, trans_model)
    mean, std = global_mean_std(cmvn_ark)
    corpus = _Corpus(cuts_path, mean, std, InJob(job, nj))
    saved = torch.load(exp_dir / f"realign.{it}.pt", weights_only=False)
    model = SplicedMLP(int(mean.shape[0]), trans_model.num_pdfs, cfg.context, cfg.hidden, cfg.layers)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    log_prior = saved["log_prior"]
    previous = AlignmentTable(exp_dir / f"ali.{it - 1}.ark")
    failed, aligned, frames, changed_pdf, changed_phone = [], 0, 0, 0, 0
    with intra_op_threads(1 if nj > 1 else None), alignment_table_writer(out_ark) as write:
        for block in tqdm(corpus.blocks(cfg.align_block_frames), desc=f"realign {it}.{job}", unit="block", leave=False):
            with torch.no_grad():
                loglikes = [model.log_posteriors(feats).numpy() - log_prior for _, feats, _ in block]
            results = align(
                [compiler.compile(text) for _, _, text in block],
                loglikes,
                tid_to_pdf,
                backend=cfg.backend,
                beam=cfg.beam,
                retry_beam=cfg.retry_beam,
            )
            for (utt, _, _), result in zip(block, results):
                if result is None:
                    failed.append(utt)
                    continue
                new = np.asarray(result[0])
                write(utt, new)
                aligned += 1
                if utt in previous:
                    old = np.asarray(previous[utt])
                    frames += len(old)
                    changed_pdf += int((tid_to_pdf[new] != tid_to_pdf[old]).sum())
                    # Phone-level changes measure convergence: the ergodic silence HMM lets frames
                    # move between its states freely, so pdf-level changes never quite reach zero.
                    changed_phone += int((tid_to_phone[new] != tid_to_phone[old]).sum())
    previous.close()
    return {
        "failed": failed,
        "aligned": aligned,
        "frames": frames,
        "changed_pdf": changed_pdf,
        "changed_phone": changed_phone,
    }


def flat_start(
    cuts_path: Path | str,
    lang_dir: Path | str,
    exp_dir: Path | str,
    cmvn_ark: Path | str,
    cfg: FlatStartConfig = FlatStartConfig(),
    resume_key: str | None = None,
    nj: int = 1,
    engine: JobsConfig | None = None,
) -> dict:
    """Align ``cuts_path`` from scratch into ``exp_dir`` (ali.N.{ark,scp} per iteration, final.pt, ali.{ark,scp}).

    The cuts are streamed from disk block by block in every pass (features read, graphs compiled per
    block), and alignments go to tables on disk: memory stays flat as the corpus grows. Each realignment
    is ``nj`` jobs on ``engine`` (asrhybrid.jobs) with the iteration's network (``realign.N.pt``); an
    utterance's alignment does not depend on its job, so neither do the iterations.
    """
    engine = engine or JobsConfig()
    cuts_path, lang_dir, exp_dir = Path(cuts_path), Path(lang_dir), Path(exp_dir)
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"align-flat-start: backend '{cfg.backend}' is not one of {', '.join(BACKENDS)}")
    fix_training_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    tree, trans_model = init_mono_model(lang_dir, exp_dir)
    tid_to_pdf = np.asarray(trans_model.transition_id_to_pdf_array(), dtype=np.int64)
    tid_to_phone, _ = transition_arrays(trans_model)
    compiler = GraphCompiler(lang_dir, tree, trans_model)
    mean, std = global_mean_std(Path(cmvn_ark))
    corpus = _Corpus(cuts_path, mean, std)

    model = SplicedMLP(int(mean.shape[0]), trans_model.num_pdfs, cfg.context, cfg.hidden, cfg.layers)
    history, log_prior = [], None
    # an iteration is finished when its checkpoint is there (written after its alignments)
    first, checkpoint = last_checkpoint([(it, exp_dir / f"{it}.pt") for it in range(1, cfg.iterations + 1)], resume_key)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        generator.set_state(checkpoint["generator"])
        history, log_prior = checkpoint["history"], checkpoint["log_prior"]
        num_utts = checkpoint["utterances"]
        log.info("resuming after iteration %d (its checkpoint %s)", first, exp_dir / f"{first}.pt")
    else:
        num_utts = _equal_alignments(corpus, compiler, tid_to_phone, lang_dir, cfg, exp_dir / "ali.0.ark")

    for it in range(first + 1, cfg.iterations + 1):
        previous = AlignmentTable(exp_dir / f"ali.{it - 1}.ark")
        model.train()
        ce, acc, counts = _train(
            model, corpus, previous, tid_to_pdf, cfg, generator, cfg.lr * cfg.lr_decay ** (it - 1), trans_model.num_pdfs
        )
        log_prior = log_priors(counts + 1.0, silence_scale=1.0)  # add-one: a flat start's priors, no silence scaling
        model.eval()
        previous.close()
        with atomic_output(exp_dir / f"realign.{it}.pt") as tmp:  # the network the realignment jobs score with
            torch.save({"state_dict": model.state_dict(), "log_prior": log_prior}, tmp)
        failed, aligned, frames, changed_pdf, changed_phone = _realign(
            exp_dir, cuts_path, lang_dir, Path(cmvn_ark), cfg, it, nj, engine
        )
        (exp_dir / f"realign.{it}.pt").unlink()
        frames = max(frames, 1)
        entry = {
            "iteration": it,
            "frame_ce": round(ce, 4),
            "frame_accuracy": round(acc, 4),
            "changed_pdf_frames": round(changed_pdf / frames, 5),
            "changed_phone_frames": round(changed_phone / frames, 5),
            "aligned": aligned,
            "failed": failed,
        }
        history.append(entry)
        log.info(
            "iteration %d: frame CE %.3f, accuracy %.1f%%, frames changing pdf %.2f%%, phone %.2f%%, "
            "%d aligned, %d failed%s",
            it,
            ce,
            100 * acc,
            100 * entry["changed_pdf_frames"],
            100 * entry["changed_phone_frames"],
            aligned,
            len(failed),
            f": {' '.join(failed[:10])}" if failed else "",
        )
        with atomic_output(exp_dir / f"{it}.pt") as tmp:  # written last: it marks the iteration finished
            torch.save(
                {
                    "state_dict": model.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                    "log_prior": log_prior,
                    "resume_key": resume_key,
                    "utterances": num_utts,
                },
                tmp,
            )
    with alignment_table_writer(exp_dir / "ali.ark") as write:
        for utt, ali in iter_alignments(exp_dir / f"ali.{cfg.iterations}.ark"):
            write(utt, ali)
    with atomic_output(exp_dir / "final.pt") as tmp:
        torch.save(
            {
                "state_dict": model.state_dict(),
                "config": asdict(cfg),
                "feat_mean": mean,
                "feat_std": std,
                "log_prior": log_prior,
                "feat_dim": int(mean.shape[0]),
                "num_pdfs": int(trans_model.num_pdfs),
            },
            tmp,
        )
    summary = {"iterations": history, "utterances": num_utts}
    write_text_atomic(exp_dir / "flat_start.json", json.dumps(summary, indent=1) + "\n")
    return summary


def load_flat_start_model(exp_dir: Path | str):
    """(SplicedMLP in eval mode, feature mean, feature std, log prior) from ``exp_dir/final.pt``."""
    exp_dir = Path(exp_dir)
    if not (exp_dir / "final.pt").is_file():
        raise DataError([f"{exp_dir / 'final.pt'} not found: run the flat start (asrhybrid align-flat-start) first"])
    ckpt = torch.load(exp_dir / "final.pt", weights_only=False)
    cfg = FlatStartConfig(**ckpt["config"])
    model = SplicedMLP(ckpt["feat_dim"], ckpt["num_pdfs"], cfg.context, cfg.hidden, cfg.layers)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt["feat_mean"], ckpt["feat_std"], ckpt["log_prior"]
