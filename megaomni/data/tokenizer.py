"""Sentencepiece tokenizer with the chat and media special tokens, and in-process training; the
interface the data pipeline uses on any tokenizer (:class:`Tokenizer`), and :func:`load_tokenizer`,
which picks this one or a Hugging Face model's (megaomni/data/hf_tokenizer.py) by the path.

The media tokens are the modalities' (megaomni.media.registry): each one's placeholders and pad."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Protocol

import sentencepiece as spm

from megaomni.data.chat_format import Frame
from megaomni.data.media_tokens import Expansion
from megaomni.errors import BadSample
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


def reserved_tokens() -> tuple[str, ...]:
    """The format's own tokens, never in content: the modalities' pads and the chat tokens."""
    return (*(m.pad for m in registry.modalities()), *CHAT_TOKENS)


def optional_tokens() -> tuple[str, ...]:
    """Tokenizers trained before these existed still load; samples that need one are skipped
    (megaomni/data/sample.py)."""
    return tuple(s.placeholder for _, s in registry.sources() if s.optional)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer(Protocol):
    """What the data pipeline asks of a tokenizer (:class:`OmniTokenizer`, ``HFTokenizer``)."""

    path: str

    @property
    def reserved_tokens(self) -> tuple[str, ...]:
        """Tokens content may not hold: the format's own."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    def token_id(self, token: str) -> int | None: ...

    def media_pad_id(self, modality: str) -> int: ...

    def media_pad_ids(self, modality: str) -> tuple[int, ...]: ...

    def frames(self, roles: tuple[str, ...]) -> tuple[Frame, ...]:
        """The tokens around each turn's content in a conversation of these roles."""

    def expansion(self, placeholder: str) -> Expansion:
        """The ids a placeholder becomes; raises BadSample (unsupported_media) where it has none."""

    def encode_content(self, text: str) -> list[int | str]:
        """A turn's content as ids, each placeholder in it as its string."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


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
    """A sentencepiece model that has the :func:`special_tokens`: ``token_id`` gives their ids. Every
    turn is framed alike: its role token before the content, ``<|end|>`` after (learned after an
    answer); a placeholder is one piece, and becomes its modality's pad alone."""

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
        self._placeholders = {self._special[s.placeholder]: s.placeholder for _, s in registry.sources()
                              if s.placeholder in self._special}
        user, assistant, end = (self._special[t] for t in CHAT_TOKENS)
        self._frames = {"user": Frame((user,), (end,), 1), "assistant": Frame((assistant,), (end,), 1)}

    @property
    def reserved_tokens(self) -> tuple[str, ...]:
        return reserved_tokens()

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

    def media_pad_ids(self, modality: str) -> tuple[int, ...]:
        """Every pad id of ``modality``'s placeholders: its one pad."""
        return (self.media_pad_id(modality),)

    def frames(self, roles: tuple[str, ...]) -> tuple[Frame, ...]:
        return tuple(self._frames[role] for role in roles)

    def expansion(self, placeholder: str) -> Expansion:
        modality, source = next((m, s) for m, s in registry.sources() if s.placeholder == placeholder)
        if placeholder not in self._special:
            raise BadSample("unsupported_media", f"tokenizer {self.path} has no {placeholder} token (trained before "
                            f"{source.one_medium or source.kind} support; a tokenizer trained now has it)")
        return Expansion((), self.media_pad_id(modality.name), ())

    def encode_content(self, text: str) -> list[int | str]:
        return [self._placeholders.get(token, token) for token in self.sp.encode(text)]

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


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer at ``path``: a sentencepiece model file (:class:`OmniTokenizer`), or a Hugging
    Face model folder holding ``tokenizer.json`` (``HFTokenizer``)."""
    if os.path.isdir(path):
        # Imports transformers, which takes seconds: only for a Hugging Face tokenizer.
        from megaomni.data.hf_tokenizer import HFTokenizer

        return HFTokenizer(path)
    if os.path.isfile(path) or path.endswith(".model"):
        return OmniTokenizer(path)
    raise ValueError(f"tokenizer {path}: no such file or folder (give a sentencepiece .model file or a Hugging Face "
                     "model folder holding tokenizer.json)")
