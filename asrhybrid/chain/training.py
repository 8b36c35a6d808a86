"""Stage 6 for chain systems (``dnn_chain``, ``lstmp_chain``, ``fast_slow_chain``): the denominator graph from
the training alignments, then stage 6's trainer (asrhybrid.nnet.train.train_am) with the LF-MMI objective.

Beside what train_am writes, EXP_DIR gets ``den.pt`` (the denominator graph and its initial probabilities) and
``den.json`` (the phone LM's and the graph's sizes, and the time to build them: Kaldi's chain-est-phone-lm and
chain-make-den-fst logs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from asrhybrid.align.graphs import GraphCompiler, phone_instances, transition_arrays
from asrhybrid.chain.den_graph import DenominatorGraph, make_den_graph
from asrhybrid.chain.objective import ChainConfig, ChainObjective
from asrhybrid.chain.phone_lm import PhoneLmEstimator, PhoneLmOptions
from asrhybrid.chain.supervision import SupervisionMaker
from asrhybrid.errors import ConfigError
from asrhybrid.hmm import load_model
from asrhybrid.kaldi_tables import AlignmentTable, iter_alignments
from asrhybrid.lang.io import read_int_list
from asrhybrid.nnet.priors import silence_pdfs
from asrhybrid.nnet.train import TrainConfig, train_am
from asrhybrid.nnet.trainer import Workers
from asrhybrid.outputs import write_text_atomic

log = logging.getLogger(__name__)


def tree_frame_subsampling(tree_dir: Path) -> int:
    """The frame subsampling factor of a tree dir's tree and alignments (build-tree's tree.json; 1 if none)."""
    info = Path(tree_dir) / "tree.json"
    return int(json.loads(info.read_text()).get("frame_subsampling_factor", 1)) if info.is_file() else 1


def denominator_from_alignments(ali_ark: Path, tree, trans_model, chain: ChainConfig) -> tuple[DenominatorGraph, dict]:
    """The denominator graph of the phone LM of the training alignments ``ali_ark`` (transition ids of
    ``trans_model``), and its sizes."""
    started = time.perf_counter()
    tid_phone, starts = transition_arrays(trans_model)
    estimator = PhoneLmEstimator(PhoneLmOptions(chain.ngram_order, chain.no_prune_ngram_order, chain.num_extra_states))
    utterances = 0
    for _, tids in iter_alignments(ali_ark):
        estimator.add(p for _, p, _, _, _ in phone_instances(tids, tid_phone, starts))
        utterances += 1
    phone_lm = estimator.estimate()
    den = make_den_graph(phone_lm, tree, trans_model)
    stats = {
        "utterances": utterances,
        "phone_lm": {"states": phone_lm.num_states, "arcs": len(phone_lm.arcs), **vars(estimator.options)},
        "den": {"states": den.fsa.num_states - 1, "arcs": int((den.fsa.label > 0).sum()), "pdfs": den.num_pdfs},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return den, stats


def train_chain_am(
    cuts_path: Path,
    tree_dir: Path,
    lang_dir: Path,
    cmvn_mean: np.ndarray,
    cmvn_std: np.ndarray,
    exp_dir: Path,
    cfg: TrainConfig,
    resume_key: str | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Train the chain system ``cfg.system`` into ``exp_dir``; returns train_am's summary with the den graph's."""
    chain = ChainConfig.from_dict(cfg.chain)
    factor = tree_frame_subsampling(tree_dir)
    if "frame_subsampling_factor" in cfg.chain and chain.frame_subsampling_factor != factor:
        raise ConfigError(
            f"chain: frame_subsampling_factor {chain.frame_subsampling_factor}, but {tree_dir}'s tree and alignments "
            f"are at 1/{factor} of the frame rate"
        )
    chain.frame_subsampling_factor = factor
    cfg = replace(cfg, chain={**cfg.chain, "frame_subsampling_factor": factor})  # saved with the model
    exp_dir = Path(exp_dir)
    tree, trans_model = load_model(tree_dir)
    den, den_stats = denominator_from_alignments(tree_dir / "ali.ark", tree, trans_model, chain)
    if Workers().rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        den.save(exp_dir / "den.pt")
        write_text_atomic(exp_dir / "den.json", json.dumps(den_stats, indent=1) + "\n")
    alignments = AlignmentTable(tree_dir / "ali.ark")
    supervision = SupervisionMaker(
        GraphCompiler(lang_dir, tree, trans_model),
        alignments,
        chain.output_tolerance,
        den if chain.normalize_numerator else None,
        chain.all_final,
    )

    def objective(train_cfg, targets, normalizer, right_context, perturbation):
        return ChainObjective(train_cfg, targets, normalizer, right_context, perturbation, chain, den, supervision)

    silence = silence_pdfs(trans_model, read_int_list(lang_dir / "phones" / "silence.int"))
    try:
        summary = train_am(
            cuts_path,
            tree_dir / "ali_pdf.ark",
            trans_model.num_pdfs,
            silence,
            cmvn_mean,
            cmvn_std,
            exp_dir,
            cfg,
            resume_key,
            device,
            objective,
        )
    finally:
        alignments.close()
    return {**summary, "den": den_stats}
