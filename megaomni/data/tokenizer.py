"""Sentencepiece tokenizer with the chat and media special tokens, and in-process training.

The media tokens are the modalities' (megaomni.media.registry): each one's placeholders and pad."""

from __future__ import annotations

import os
from typing import Iterable, Optional

import sentencepiece as spm

from megaomni.media import registry

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END)


def special_tokens() -> tuple[str, ...]:
    """Every modality's required placeholders, then their pads, the chat tokens, and last the
    optional placeholders: a tokenizer trained now gives the tokens the ids they had before the
    optional ones (``<video>``) came."""
    sources = registry.sources()
    return (*(s.placeholder for _, s in sources if not s.optional), *(m.pad for m in registry.modalities()),
            *CHAT_TOKENS, *(s.placeholder for _, s in sources if s.optional))


def optional_tokens() -> tuple[str, ...]:
    """Tokenizers trained before these existed still load; samples that need one are skipped
    (megaomni/data/sample.py)."""
    return tuple(s.placeholder for _, s in registry.sources() if s.optional)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(texts: Iterable[str], out_prefix: str, vocab_size: int, *,
                    model_type: str = "bpe", byte_fallback: bool = False) -> str:
    """Train a sentencepiece model on ``texts`` and write ``out_prefix.model``; returns its path.

    Special tokens are user-defined symbols, so each is one id wherever it appears. Text is kept
    verbatim (identity normalisation, no dummy prefix, whitespace untouched) so that
    ``decode(encode(text)) == text`` for characters seen in training. ``vocab_size`` is a soft
    limit: a small corpus yields fewer pieces instead of an error. ``byte_fallback`` makes every
    character encodable but needs ``vocab_size`` > 256 + the corpus' pieces.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r}: valid: bpe, unigram")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) + list(special_tokens())),
        model_prefix=out_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        hard_vocab_limit=False,
        byte_fallback=byte_fallback,
        user_defined_symbols=list(special_tokens()),
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return out_prefix + ".model"


class OmniTokenizer:
    """A sentencepiece model that has the :func:`special_tokens`: ``token_id`` gives their ids."""

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer {model_path}: no such file (train one with "
                                    "megaomni.data.tokenizer.train_tokenizer or tools/make_toy_data.py)")
        self.path = model_path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(model_path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"tokenizer {model_path}: not a sentencepiece model ({e})") from e
        if self.sp.pad_id() < 0:
            raise ValueError(f"tokenizer {model_path}: has no pad token (train it with pad_id set)")
        self._special: dict[str, int] = {}
        optional = optional_tokens()
        for token in special_tokens():
            token_id = self.sp.piece_to_id(token)
            # A missing piece maps to unk; a piece that is not a user-defined symbol would not be
            # kept whole when it appears inside text.
            if token_id != self.sp.unk_id() and self.sp.encode(token) == [token_id]:
                self._special[token] = token_id
            elif token not in optional:
                required = [t for t in special_tokens() if t not in optional]
                raise ValueError(f"tokenizer {model_path}: lacks the special token {token} as a single "
                                 f"user-defined symbol (needs all of {', '.join(required)}; "
                                 "train it with megaomni.data.tokenizer.train_tokenizer)")

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def pad_id(self) -> int:
        return self.sp.pad_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def token_id(self, token: str) -> Optional[int]:
        """Id of a special token; None for an optional one this tokenizer lacks."""
        return self._special.get(token)

    def media_pad_id(self, modality: str) -> int:
        """Id of the pad token of modality ``modality`` ("vision", "audio"): the token its
        encoder's outputs replace."""
        if modality not in {m.name for m in registry.modalities()}:
            raise ValueError(f"tokenizer {self.path}: no modality {modality!r}, so no pad token for it")
        return self._special[registry.get(modality).pad]

    @property
    def user_id(self) -> int:
        return self._special[USER]

    @property
    def assistant_id(self) -> int:
        return self._special[ASSISTANT]

    @property
    def end_id(self) -> int:
        return self._special[END]

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])
