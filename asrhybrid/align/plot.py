"""A picture for a person to check alignments: word boundaries over each utterance's energy envelope."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lhotse import load_manifest

from asrhybrid.align.generation import cut_entries, read_ctm
from asrhybrid.outputs import atomic_output


def plot_word_boundaries(
    cuts_path: Path | str, word_ctm: Path | str, png: Path | str, max_utterances: int = 30
) -> Path:
    """One row per utterance: frame energy (dB, 10 ms) with the aligned words shaded and named."""
    import matplotlib  # heavy, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctm = read_ctm(Path(word_ctm))
    words = {c.id: cut_entries(ctm, c) for c in load_manifest(cuts_path)}
    cuts = [c for c in load_manifest(cuts_path) if words[c.id]][:max_utterances]
    fig, axes = plt.subplots(len(cuts), 1, figsize=(12, 1.1 * len(cuts) + 0.5), squeeze=False)
    for ax, cut in zip(axes[:, 0], cuts):
        audio = cut.load_audio()[0]
        hop = int(cut.sampling_rate * 0.01)
        frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
        energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
        t = np.arange(len(energy)) * 0.01
        ax.plot(t, energy, color="black", linewidth=0.6)
        low, high = energy.min(), energy.max()
        for k, (start, end, label) in enumerate(words[cut.id]):
            ax.axvspan(start, end, color=("tab:blue" if k % 2 else "tab:orange"), alpha=0.25)
            ax.text((start + end) / 2, high, label, ha="center", va="top", fontsize=7)
        ax.set_xlim(0, cut.duration)
        ax.set_ylim(low - 3, high + 3)
        ax.set_ylabel(cut.id, rotation=0, ha="right", fontsize=6)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds (energy in dB per 10 ms; shaded: aligned words)")
    fig.tight_layout()
    png = Path(png)
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return png
