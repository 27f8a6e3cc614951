"""What a media placeholder (``Source.placeholder``: ``<image>``, ``<video>``, ``<audio>``) becomes in
token ids: a pad token repeated once per encoder output, between fixed tokens. Megaomni's own
sentencepiece tokenizer has no fixed tokens; a Hugging Face model's tokenizer has its family's,
from the table below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from megaomni.media.audio import AUDIO
from megaomni.media.vision import IMAGE, VIDEO


class Expansion(NamedTuple):
    """A placeholder's ids: ``before`` + n x ``pad`` + ``after``, n its encoder outputs."""

    before: tuple[int, ...]
    pad: int
    after: tuple[int, ...]


@dataclass(frozen=True)
class MediaTokens:
    """A family's token names for one placeholder."""

    family: str  # named in messages
    placeholder: str
    before: tuple[str, ...]
    pad: str
    after: tuple[str, ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        return (*self.before, self.pad, *self.after)


# A tokenizer takes, per placeholder, the first row whose tokens it has all. LLaVA's rows come first:
# the Qwen-based LLaVA models' tokenizers also hold Qwen2-VL's tokens, but their processors repeat
# <image> / <video>. Qwen2.5-Omni's tokenizer names Qwen2-VL's ids anew (<|vision_bos|> ...), and
# holds Qwen2-Audio's audio tokens; a video with its audio track (data.audio_in_video) takes both
# rows (megaomni/data/audio_in_video.py).
FAMILIES = (
    MediaTokens("LLaVA", IMAGE, (), "<image>", ()),
    MediaTokens("LLaVA-NeXT-Video", VIDEO, (), "<video>", ()),
    MediaTokens("Qwen2-VL", IMAGE, ("<|vision_start|>",), "<|image_pad|>", ("<|vision_end|>",)),
    MediaTokens("Qwen2-VL", VIDEO, ("<|vision_start|>",), "<|video_pad|>", ("<|vision_end|>",)),
    MediaTokens("Qwen2.5-Omni", IMAGE, ("<|vision_bos|>",), "<|IMAGE|>", ("<|vision_eos|>",)),
    MediaTokens("Qwen2.5-Omni", VIDEO, ("<|vision_bos|>",), "<|VIDEO|>", ("<|vision_eos|>",)),
    MediaTokens("Qwen2-Audio", AUDIO, ("<|audio_bos|>",), "<|AUDIO|>", ("<|audio_eos|>",)),
)


def media_tokens(placeholder: str, has: Callable[[str], bool]) -> MediaTokens | None:
    """The row of ``placeholder`` for a tokenizer that ``has`` these token names; None: no row fits."""
    return next((row for row in FAMILIES if row.placeholder == placeholder and all(map(has, row.tokens))), None)


def known(placeholder: str) -> str:
    """The rows of ``placeholder``, for messages: ``"Qwen2-VL <|vision_start|><|image_pad|><|vision_end|>, ..."``."""
    rows = [f"{row.family} {''.join(row.tokens)}" for row in FAMILIES if row.placeholder == placeholder]
    return ", ".join(rows) or "none"
