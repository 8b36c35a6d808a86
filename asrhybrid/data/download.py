"""Corpus downloads through Lhotse's recipes (Kaldi's local/download_and_untar.sh), when online.

Recipes never need this when ``corpus_dir`` is given; it is the fallback for a
user with a network and no copy of the corpus.
"""

from __future__ import annotations

from pathlib import Path

import lhotse.recipes

from asrhybrid.errors import AsrHybridError, ConfigError

# corpus -> (Lhotse download function, its keyword arguments, the corpus folder it unpacks)
DOWNLOADS = {
    "yesno": ("download_yesno", {}, "waves_yesno"),
    "mini_librispeech": ("download_librispeech", {"dataset_parts": "mini_librispeech"}, "LibriSpeech"),
}


def downloaded_corpus_dir(name: str, target_dir: Path | str) -> Path:
    if name not in DOWNLOADS:
        raise ConfigError(f"no downloader for '{name}' (have: {', '.join(DOWNLOADS)}); give corpus_dir=PATH")
    return Path(target_dir) / DOWNLOADS[name][2]


def download_corpus(name: str, target_dir: Path | str, force: bool = False) -> Path:
    """Download ``name`` into ``target_dir`` (Lhotse skips a finished download); returns the corpus dir."""
    corpus_dir = downloaded_corpus_dir(name, target_dir)

    function, kwargs, _ = DOWNLOADS[name]
    try:
        getattr(lhotse.recipes, function)(Path(target_dir), force_download=force, **kwargs)
    except OSError as e:  # URLError is an OSError: offline, DNS, refused
        raise AsrHybridError(
            f"downloading {name} into {target_dir} failed ({e}); without a network give corpus_dir=PATH"
        ) from None
    return corpus_dir
