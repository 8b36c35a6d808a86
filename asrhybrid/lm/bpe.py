"""Tokens for the end-to-end branch: SentencePiece BPE, unigram or character models (icefall's lang_bpe_N)."""

from __future__ import annotations

import logging
from pathlib import Path

import sentencepiece as spm

from asrhybrid.errors import ConfigError, DataError
from asrhybrid.outputs import atomic_output, write_text_atomic

log = logging.getLogger(__name__)


def train_tokens(texts: list[str], out_dir: Path, vocab_size: int, model_type: str = "bpe") -> Path:
    """Train ``out_dir/{model_type}.model`` on the transcripts; writes ``tokens.txt`` (piece id) beside it."""
    if model_type not in ("bpe", "unigram", "char"):
        raise ConfigError(f"token model_type must be bpe, unigram or char, not '{model_type}'")
    lines = [t for t in texts if t.strip()]
    if not lines:
        raise DataError(["no transcripts to train the token model on"])
    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "transcript_words.txt"
    write_text_atomic(text, "".join(t + "\n" for t in lines))
    model = out_dir / f"{model_type}.model"
    with atomic_output(model) as tmp:
        prefix = str(tmp)[: -len(".model")]
        # icefall's settings: <blk>=0 (CTC blank / RNN-T blank), <sos/eos>=1, <unk>=2; no bos/eos pieces.
        try:
            spm.SentencePieceTrainer.train(
                input=str(text),
                model_prefix=prefix,
                model_type=model_type,
                vocab_size=vocab_size,
                character_coverage=1.0,
                input_sentence_size=10**8,
                user_defined_symbols=["<blk>", "<sos/eos>"],
                unk_id=2,
                bos_id=-1,
                eos_id=-1,
                hard_vocab_limit=model_type != "char",
                minloglevel=2,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size too high (500). Please set it to a value <= 212."
            raise ConfigError(
                f"{model_type} token model on {len(lines)} transcripts: {str(e).split('] ')[-1]}"
            ) from None
        Path(prefix + ".vocab").unlink(missing_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    write_text_atomic(out_dir / "tokens.txt", "".join(f"{sp.id_to_piece(i)} {i}\n" for i in range(sp.get_piece_size())))
    log.info("%s tokens: %d pieces in %s", model_type, sp.get_piece_size(), model)
    return model
