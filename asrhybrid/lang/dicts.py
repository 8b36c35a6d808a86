"""Stage 2's dict dirs: a corpus's own lexicon (yesno), CMUdict over its words, or the user's Kaldi dict dir."""

from __future__ import annotations

import shutil
from pathlib import Path

from asrhybrid.errors import ConfigError
from asrhybrid.lang.lexicon import Lexicon, corpus_dict_dir, read_lexicon, write_dict_dir

# Kaldi's egs/yesno/s5/input: one phone per word, silence as the word <SIL> (also the OOV word).
YESNO_LEXICON = Lexicon([("<SIL>", ["SIL"]), ("YES", ["Y"]), ("NO", ["N"])])


def transcript_words(texts: list[str]) -> set[str]:
    return {w for t in texts for w in t.split()}


def prepare_dict(kind: str, dict_dir: Path, texts: list[str], stress: bool = True) -> list[str]:
    """Write ``dict_dir`` for ``kind`` (yesno, cmudict, or a path to a Kaldi dict dir); returns words left to the OOV."""
    if kind == "yesno":
        write_dict_dir(dict_dir, YESNO_LEXICON, ["SIL"], "SIL")
        return sorted(transcript_words(texts) - YESNO_LEXICON.words())
    if kind == "cmudict":
        return corpus_dict_dir(dict_dir, transcript_words(texts), stress=stress)
    source = Path(kind)
    if source.is_dir():
        if source.resolve() != dict_dir.resolve():
            shutil.copytree(source, dict_dir, dirs_exist_ok=True)
        plain = dict_dir / "lexicon.txt"
        lexicon = read_lexicon(plain) if plain.is_file() else read_lexicon(dict_dir / "lexiconp.txt", with_probs=True)
        return sorted(transcript_words(texts) - lexicon.words())
    raise ConfigError(f"lexicon must be 'yesno', 'cmudict' or a Kaldi dict dir, not '{kind}'")
