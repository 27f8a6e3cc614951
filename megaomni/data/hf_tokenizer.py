"""A Hugging Face model's own tokenizer (``tokenizer.json`` and its configuration), with the
interface the data pipeline uses (megaomni.data.tokenizer.Tokenizer).

Turns are framed by the model's chat template (megaomni/data/chat_format.py); placeholders become
the model family's media tokens (megaomni/data/media_tokens.py). A turn's content is encoded whole
with each placeholder replaced by its pad token, as the family's processor encodes its text: the
pads are special tokens, so the text around them encodes as it would alone, and a tokenizer that
marks the start of a text (sentencepiece's leading space) marks it once, not once per piece.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

from transformers import AutoTokenizer

from megaomni.data.chat_format import STAND_IN, Frame, template_frames
from megaomni.data.media_tokens import Expansion, known, media_tokens
from megaomni.errors import BadSample
from megaomni.media import registry

PROBE = ("user", "assistant", "user", "assistant")  # the template must frame these when loaded


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class HFTokenizer:
    """The tokenizer of Hugging Face model folder ``folder``. ``encode`` adds no special tokens
    (no BOS): the chat template frames the text. The pad id is the pad token's, else the end of
    sequence token's (a pad is never learned). ``reserved_tokens`` are its special added tokens
    but the placeholders (LLaVA's ``<image>``): its non-special added ones (Qwen3's ``<think>``)
    are text a model may learn to write."""

    def __init__(self, folder: str):
        self.path = folder
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            raise ValueError(f"tokenizer {folder}: no tokenizer.json (give a Hugging Face model folder, "
                             "or a sentencepiece .model file)")
        try:
            self._tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # transformers and tokenizers raise many kinds for an unreadable folder
            raise ValueError(f"tokenizer {folder}: cannot be loaded by transformers ({_first_line(e)})") from e
        self._load_processor_template()
        if self._tok.pad_token_id is None and self._tok.eos_token_id is None:
            raise ValueError(f"tokenizer {folder}: has neither a pad nor an end of sequence token "
                             "(set pad_token in its tokenizer_config.json)")
        self._vocab = self._tok.get_vocab()
        self._special = {i for i, token in self._tok.added_tokens_decoder.items() if token.special}
        self._find_media_tokens()
        self._frames: dict[tuple[str, ...], tuple[Frame, ...]] = {}
        self._parts = False
        try:
            self._parts = self._reads_parts()
            self._frames[PROBE] = template_frames(self._render, PROBE, self.encode, self._special)
        except ValueError as e:
            raise ValueError(f"tokenizer {folder}: its chat template cannot be split into turns ({e})") from e

    def _find_media_tokens(self) -> None:
        """Each placeholder's expansion (where its family's tokens are added tokens here), and the
        reserved tokens."""
        added = {token.content: i for i, token in self._tok.added_tokens_decoder.items()}
        placeholders = [s.placeholder for _, s in registry.sources()]
        rows = {p: row for p in placeholders if (row := media_tokens(p, added.__contains__))}
        self._expansions = {p: Expansion(tuple(added[t] for t in row.before), added[row.pad],
                                         tuple(added[t] for t in row.after)) for p, row in rows.items()}
        self._pad_text = {p: row.pad for p, row in rows.items()}
        self._pads = {e.pad for e in self._expansions.values()}
        self._placeholder = re.compile("|".join(map(re.escape, placeholders)))
        # A media token in content would pass for a placeholder's, even one that is not special.
        reserved = [t for t, i in added.items() if i in self._special] + [t for r in rows.values() for t in r.tokens]
        self.reserved_tokens = tuple(t for t in dict.fromkeys(reserved) if t not in placeholders)

    def _reads_parts(self) -> bool:
        """Whether the template reads content as parts (``[{"type": "text", "text": ...}]``, as
        LLaVA's does), not as a string."""
        try:
            return STAND_IN.format(0) not in self._render([{"role": "user", "content": STAND_IN.format(0)}])
        except ValueError:  # it fails on a string
            return True

    def _load_processor_template(self) -> None:
        """The processor's template (chat_template.json) where the tokenizer has none (LLaVA)."""
        path = os.path.join(self.path, "chat_template.json")
        if self._tok.chat_template is None and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    self._tok.chat_template = json.load(f)["chat_template"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"tokenizer {self.path}: chat_template.json holds no \"chat_template\" ({e})") from e
        if self._tok.chat_template is None:
            raise ValueError(f"tokenizer {self.path}: no chat template (in tokenizer_config.json, chat_template.jinja "
                             "or chat_template.json): it frames the turns")

    def _render(self, messages: list[dict]) -> str:
        """The template's text of ``messages`` (string content), as parts where it reads those."""
        if self._parts:
            messages = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
        try:
            return self._tok.apply_chat_template(messages, tokenize=False)
        except Exception as e:  # a template is code: it raises what it likes (raise_exception, a bad filter)
            raise ValueError(f"rendering {[m['role'] for m in messages]} fails: {_first_line(e)}") from e

    @property
    def vocab_size(self) -> int:
        """Its tokens with the added ones (the model's embedding may have more rows)."""
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        return self._tok.eos_token_id if self._tok.pad_token_id is None else self._tok.pad_token_id

    @property
    def eos_id(self) -> int | None:
        return self._tok.eos_token_id

    def token_id(self, token: str) -> int | None:
        """Id of a token of its vocabulary; None where it has none."""
        return self._vocab.get(token)

    def media_pad_ids(self, modality: str) -> tuple[int, ...]:
        """The pad ids of ``modality``'s placeholders this tokenizer has tokens for (vision: image
        and video pads), in source order."""
        if modality not in {m.name for m in registry.modalities()}:
            raise ValueError(f"tokenizer {self.path}: no modality {modality!r}, so no pad token for it")
        pads = [self._expansions[s.placeholder].pad for s in registry.get(modality).sources
                if s.placeholder in self._expansions]
        return tuple(dict.fromkeys(pads))

    def media_pad_id(self, modality: str) -> int:
        """The first of :meth:`media_pad_ids` (an image's for vision)."""
        if not (pads := self.media_pad_ids(modality)):
            sources = registry.get(modality).sources
            raise ValueError(f"tokenizer {self.path}: has no tokens for {modality} media (knows: "
                             f"{'; '.join(known(s.placeholder) for s in sources)}): set model.{modality}.enabled=false")
        return pads[0]

    def frames(self, roles: tuple[str, ...]) -> tuple[Frame, ...]:
        if roles not in self._frames:
            try:
                self._frames[roles] = template_frames(self._render, roles, self.encode, self._special)
            except ValueError as e:
                raise BadSample("bad_conversation", f"tokenizer {self.path}: its chat template cannot frame "
                                f"{', '.join(roles)} ({e})") from e
        return self._frames[roles]

    def expansion(self, placeholder: str) -> Expansion:
        if placeholder not in self._expansions:
            raise BadSample("unsupported_media", f"tokenizer {self.path} has no tokens for {placeholder} "
                            f"(knows: {known(placeholder)})")
        return self._expansions[placeholder]

    def encode_content(self, text: str) -> list[int | str]:
        placeholders = self._placeholder.findall(text)
        ids = self.encode(self._placeholder.sub(lambda m: self._pad_text[m[0]], text))
        order = iter(placeholders)  # content holds no pad token (reserved): each pad is a placeholder
        return [next(order) if token in self._pads else token for token in ids]

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])
