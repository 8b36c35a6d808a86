"""State priors and scaled likelihoods for hybrid decoding (Sak, Senior, Beaufays 2014; Kaldi's nnet-am priors).

A hybrid network gives posteriors p(s | x); the HMM wants likelihoods p(x | s),
proportional to p(s | x) / p(s). Priors p(s) are the states' frame frequencies
in the training alignments; the paper divides the silence states' counts by
2.7 first (silence dominates the frames, and a full-sized silence prior makes
the decoder insert words into silences).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


def log_priors(
    pdf_counts: np.ndarray, silence_pdfs: Iterable[int] = (), silence_scale: float = 2.7, floor: float = 1e-8
) -> np.ndarray:
    """log p(s) from per-pdf frame counts, silence pdfs' counts divided by ``silence_scale``, each
    probability at least ``floor`` (pdfs never seen in training), renormalised."""
    counts = np.asarray(pdf_counts, dtype=np.float64).copy()
    if counts.ndim != 1 or not len(counts) or counts.sum() <= 0:
        raise ValueError("pdf counts must be a non-empty vector with frames in it")
    silence = sorted(set(int(p) for p in silence_pdfs))
    counts[silence] /= silence_scale
    probs = np.maximum(counts / counts.sum(), floor)
    return np.log(probs / probs.sum())


def silence_pdfs(trans_model, silence_phones: Iterable[int]) -> set[int]:
    """The pdfs of the silence phones' HMM states (phones/silence.int of the lang dir)."""
    silence = set(int(p) for p in silence_phones)
    return {
        trans_model.transition_id_to_pdf(t)
        for t in range(1, trans_model.num_transition_ids + 1)
        if trans_model.transition_id_to_phone(t) in silence
    }


def scaled_loglikes(
    log_posteriors: torch.Tensor | np.ndarray, log_prior: np.ndarray, acwt: float = 1.0, prior_scale: float = 1.0
):
    """acwt x (log p(s|x) - prior_scale x log p(s)): what the decoder reads per frame and pdf."""
    if isinstance(log_posteriors, torch.Tensor):
        prior = torch.as_tensor(log_prior, dtype=log_posteriors.dtype, device=log_posteriors.device)
        return acwt * (log_posteriors - prior_scale * prior)
    return acwt * (np.asarray(log_posteriors) - prior_scale * np.asarray(log_prior)).astype(np.float32)
