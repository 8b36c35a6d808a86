"""Stage 3's token model (``data/lang_<type>_<N>``: a SentencePiece model and tokens.txt) as the end-to-end
systems use it: ids 0 ``<blk>`` (the CTC and RNN-T blank), 1 ``<sos/eos>``, 2 ``<unk>`` (icefall's layout).
A piece that starts with ``▁`` starts a word."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from asrhybrid.errors import DataError

BLANK, SOS_EOS, UNK = 0, 1, 2
WORD_START = "\u2581"


class TokenSet:
    def __init__(self, lang_dir: Path | str):
        self.lang_dir = Path(lang_dir)
        models = sorted(self.lang_dir.glob("*.model"))
        if len(models) != 1:
            raise DataError(
                [f"{self.lang_dir}: expected one SentencePiece model (stage 3's train-bpe), found {len(models)}"]
            )
        self.model_path = models[0]
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self.starts_word = [p.startswith(WORD_START) for p in self.pieces]
        self.characters = {c for i, p in enumerate(self.pieces) if i > UNK for c in p.replace(WORD_START, "")}

    def __len__(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def unknown_characters(self, text: str) -> set[str]:
        """The characters of ``text`` that no piece holds (they would become ``<unk>``)."""
        return {c for c in text if not c.isspace() and c not in self.characters}

    def text(self, ids: list[int]) -> str:
        return self.sp.decode([i for i in ids if i > UNK])

    def words(self, ids: list[int]) -> list[str]:
        return self.text(ids).split()

    def spell(self, word: str) -> list[int]:
        """A word's pieces as in a transcript (the first one starting with ``▁``)."""
        return self.encode(word)
