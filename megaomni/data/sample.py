"""One raw sample -> model inputs: chat-formatted token ids with media placeholders expanded,
next-token labels, the answer loss mask, and decoded media."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from megaomni.config import OmniConfig
from megaomni.data.errors import BadSample
from megaomni.data.media import load_audio, load_image, log_mel, resample
from megaomni.data.shards import RawSample
from megaomni.data.tokenizer import ASSISTANT, AUDIO, AUDIO_PAD, END, IMAGE, IMAGE_PAD, USER, OmniTokenizer
from megaomni.models.media_layout import audio_tokens, vision_tokens

ROLES = ("user", "assistant")
RESERVED = (IMAGE_PAD, AUDIO_PAD, USER, ASSISTANT, END)  # the format's own tokens, never in content


@dataclass
class Sample:
    """``labels[t]`` = ``tokens[t + 1]`` (pad at the end); ``loss_mask[t]`` = 1 where ``labels[t]``
    belongs to an assistant answer or its closing ``<|end|>``."""

    key: str
    tokens: torch.Tensor  # long [L]
    labels: torch.Tensor  # long [L]
    loss_mask: torch.Tensor  # float [L]
    images: list[tuple[torch.Tensor, tuple[int, int]]] = field(default_factory=list)  # (patches, (gh, gw))
    audios: list[torch.Tensor] = field(default_factory=list)  # log-mel [frames, n_mels]


def parse_conversation(data: bytes | None) -> list[dict]:
    if data is None:
        raise BadSample("bad_json", "no KEY.json member")
    try:
        turns = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadSample("bad_json", f"malformed JSON ({e})") from e
    if not isinstance(turns, list) or not turns:
        raise BadSample("bad_conversation", "expected a non-empty list of turns")
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise BadSample("bad_conversation", f"turn {turn!r} is not {{'role': user|assistant, 'content': str}}")
        if reserved := [t for t in RESERVED if t in turn["content"]]:
            raise BadSample("reserved_token", f"{turn['role']} content contains {reserved[0]}")
    if not any(turn["role"] == "assistant" for turn in turns):
        raise BadSample("bad_conversation", "no assistant turn to learn from")
    return turns


def _check_placeholders(turns: list[dict], raw: RawSample, cfg: OmniConfig) -> None:
    for placeholder, count, enabled, section in ((IMAGE, len(raw.images), cfg.model.vision.enabled, "vision"),
                                                 (AUDIO, len(raw.audios), cfg.model.audio.enabled, "audio")):
        if any(placeholder in t["content"] for t in turns if t["role"] == "assistant"):
            raise BadSample("placeholder_mismatch", f"{placeholder} in an assistant turn")
        found = sum(t["content"].count(placeholder) for t in turns)
        if found != count:
            raise BadSample("placeholder_mismatch", f"{found} {placeholder} placeholders for {count} files")
        if count and not enabled:
            raise BadSample("modality_disabled", f"sample has {placeholder} but model.{section}.enabled=false")


def _audio_features(ext: str, data: bytes, cfg: OmniConfig) -> torch.Tensor:
    audio = cfg.model.audio
    waveform, rate = load_audio(data, ext)
    waveform = resample(waveform, rate, audio.sample_rate)
    seconds = waveform.numel() / audio.sample_rate
    if seconds > cfg.data.max_audio_seconds:
        raise BadSample("audio_too_long", f"{seconds:.2f} s clip > data.max_audio_seconds={cfg.data.max_audio_seconds}")
    return log_mel(waveform, sample_rate=audio.sample_rate, n_fft=audio.n_fft,
                   hop_length=audio.hop_length, n_mels=audio.n_mels)


def build_sample(raw: RawSample, tokenizer: OmniTokenizer, cfg: OmniConfig) -> Sample:
    """Raises :class:`BadSample` when the sample cannot be used (see ``BadSample.reason``)."""
    turns = parse_conversation(raw.conversation)
    _check_placeholders(turns, raw, cfg)  # before decoding: cheap checks first
    vision = cfg.model.vision
    images = [load_image(data, patch_size=vision.patch_size, merge_size=vision.merge_size,
                         min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels,
                         in_channels=vision.in_channels) for data in raw.images]
    audios = [_audio_features(ext, data, cfg) for ext, data in raw.audios]

    # Placeholder i of each kind expands to as many pad tokens as medium i yields encoder outputs.
    image_pads = iter([tokenizer.image_pad_id] * vision_tokens(gh, gw, vision.merge_size) for _, (gh, gw) in images)
    audio_pads = iter([tokenizer.audio_pad_id] * audio_tokens(f.shape[0], cfg.model.audio.downsample) for f in audios)
    expand = {tokenizer.image_id: image_pads, tokenizer.audio_id: audio_pads}
    tokens: list[int] = []
    answer: list[bool] = []  # token is trained on (assistant content and its <|end|>)
    for turn in turns:
        is_answer = turn["role"] == "assistant"
        content: list[int] = []
        for token in tokenizer.encode(turn["content"]):
            content += next(expand[token]) if token in expand else [token]
        role = tokenizer.assistant_id if is_answer else tokenizer.user_id
        tokens += [role, *content, tokenizer.end_id]
        answer += [False] + [is_answer] * (len(content) + 1)
    if len(tokens) > cfg.data.seq_length:
        raise BadSample("too_long", f"{len(tokens)} tokens > data.seq_length={cfg.data.seq_length}")

    if cfg.data.zero_media:  # the text-only control: same shapes and token counts, no content
        images = [(torch.zeros_like(p), grid) for p, grid in images]
        audios = [torch.zeros_like(f) for f in audios]
    ids = torch.tensor(tokens, dtype=torch.long)
    return Sample(
        key=raw.key,
        tokens=ids,
        labels=torch.cat([ids[1:], ids.new_tensor([tokenizer.pad_id])]),
        loss_mask=torch.tensor(answer[1:] + [False], dtype=torch.float32),
        images=images,
        audios=audios,
    )
