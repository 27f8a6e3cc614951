"""One raw sample -> model inputs: chat-formatted token ids with media placeholders expanded,
next-token labels, the answer loss mask, and decoded media.

A video is a sequence of images: its frames (at most ``data.max_video_frames``, picked evenly)
become images with temporal indices ``t = 0..T-1`` (a still image has ``t = 0``), and its
``<video>`` placeholder expands to the image pads of all its frames, frame after frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from megaomni.config import OmniConfig
from megaomni.data.errors import BadSample
from megaomni.data.media import load_audio, load_image, log_mel, resample
from megaomni.data.shards import VIDEO_FIELD, RawSample
from megaomni.data.tokenizer import ASSISTANT, AUDIO, AUDIO_PAD, END, IMAGE, IMAGE_PAD, USER, VIDEO, OmniTokenizer
from megaomni.models.media_layout import audio_tokens, vision_tokens

ROLES = ("user", "assistant")
RESERVED = (IMAGE_PAD, AUDIO_PAD, USER, ASSISTANT, END)  # the format's own tokens, never in content
Run = tuple[int, int, int, list]  # one placeholder's pads: (pad id, start, end, what the encoder gets for them)


@dataclass
class Sample:
    """``labels[t]`` = ``tokens[t + 1]`` (pad at the end); ``loss_mask[t]`` = 1 where ``labels[t]``
    belongs to an assistant answer or its closing ``<|end|>``."""

    key: str
    tokens: torch.Tensor  # long [L]
    labels: torch.Tensor  # long [L]
    loss_mask: torch.Tensor  # float [L]
    images: list[tuple[torch.Tensor, tuple[int, int]]] = field(default_factory=list)  # (patches, (gh, gw))
    # Per image: its frame's temporal index in its video, 0 for a still image; [] = all 0.
    image_times: list[int] = field(default_factory=list)
    audios: list[torch.Tensor] = field(default_factory=list)  # log-mel [frames, n_mels]
    truncated_from: int = 0  # the length before data.truncate cut it to data.seq_length; 0: not cut


def parse_conversation(data: bytes | None) -> list[dict]:
    if data is None:
        raise BadSample("missing_json", "no KEY.json member")
    try:
        turns = json.loads(data)
    except (ValueError, RecursionError) as e:  # ValueError: bad UTF-8, bad JSON, a 5000-digit number
        raise BadSample("bad_json", f"malformed JSON ({e})") from e
    if not isinstance(turns, list) or not turns:
        hint = " (a LLaVA record? tools/prepare_data.py converts those)" if isinstance(turns, dict) else ""
        raise BadSample("bad_conversation", f"expected a non-empty list of turns{hint}")
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise BadSample("bad_conversation", f"turn {turn!r} is not {{'role': user|assistant, 'content': str}}")
        try:
            turn["content"].encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate escape: the tokenizer cannot take it
            raise BadSample("bad_json", f"{turn['role']} content is not valid Unicode ({e})") from e
        if reserved := [t for t in RESERVED if t in turn["content"]]:
            raise BadSample("reserved_token", f"{turn['role']} content contains {reserved[0]}")
    answers = [turn["content"] for turn in turns if turn["role"] == "assistant"]
    if not answers:
        raise BadSample("no_answer", "no assistant turn to learn from")
    if not all(answer.strip() for answer in answers):
        raise BadSample("no_answer", "an empty assistant turn (it would teach to answer nothing)")
    return turns


def _check_placeholders(turns: list[dict], raw: RawSample, cfg: OmniConfig, tokenizer: OmniTokenizer) -> None:
    vision, audio = cfg.model.vision.enabled, cfg.model.audio.enabled
    for placeholder, count, enabled, section in ((IMAGE, len(raw.images), vision, "vision"),
                                                 (VIDEO, len(raw.videos), vision, "vision"),
                                                 (AUDIO, len(raw.audios), audio, "audio")):
        if any(placeholder in t["content"] for t in turns if t["role"] == "assistant"):
            raise BadSample("placeholder_mismatch", f"{placeholder} in an assistant turn")
        found = sum(t["content"].count(placeholder) for t in turns)
        if found and placeholder == VIDEO and tokenizer.video_id is None:
            raise BadSample("unsupported_media", f"tokenizer {tokenizer.path} has no {VIDEO} token (trained "
                            "before video support; a tokenizer trained now has it)")
        if found != count and raw.unread:
            raise BadSample("unsupported_media", f"{found} {placeholder} placeholders for {count} readable files; "
                            f"not read: {', '.join(raw.unread)} (images and video frames: png, jpg; audio: wav, flac)")
        if found != count:
            what = f"videos (a sample holds one: KEY.{VIDEO_FIELD}.0.png, ...)" if placeholder == VIDEO else "files"
            raise BadSample("placeholder_mismatch", f"{found} {placeholder} placeholders for {count} {what}")
        if count and not enabled:
            raise BadSample("modality_disabled", f"sample has {placeholder} but model.{section}.enabled=false")


def video_frame_indices(count: int, cap: int) -> list[int]:
    """The frames of a ``count``-frame video that are kept under ``data.max_video_frames=cap``:
    all of them, or the middle frame of each of ``cap`` equal stretches of the video."""
    if not 0 < cap < count:
        return list(range(count))
    return [(2 * i + 1) * count // (2 * cap) for i in range(cap)]


def _image(data: bytes, cfg: OmniConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    vision = cfg.model.vision
    return load_image(data, patch_size=vision.patch_size, merge_size=vision.merge_size,
                      min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels, in_channels=vision.in_channels,
                      decoder=cfg.data.decoder)


def _video(frames: list[bytes], cfg: OmniConfig) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """The kept frames as images, in time order. They must fit one patch grid: frames of one size
    always do; a frame list of mixed sizes is not one video."""
    kept = video_frame_indices(len(frames), cfg.data.max_video_frames)
    images = [_image(frames[i], cfg) for i in kept]
    for i, (_, grid) in zip(kept, images):
        if grid != images[0][1]:
            raise BadSample("bad_video", f"frame {i} fits {grid[0]}x{grid[1]} patches, frame {kept[0]} "
                            f"{images[0][1][0]}x{images[0][1][1]}: a video's frames must share one size")
    return images


def _audio_features(ext: str, data: bytes, cfg: OmniConfig) -> torch.Tensor:
    audio = cfg.model.audio
    waveform, rate = load_audio(data, ext)
    waveform = resample(waveform, rate, audio.sample_rate)
    seconds = waveform.numel() / audio.sample_rate
    if seconds > cfg.data.max_audio_seconds:
        raise BadSample("audio_too_long", f"{seconds:.2f} s clip > data.max_audio_seconds={cfg.data.max_audio_seconds}")
    return log_mel(waveform, sample_rate=audio.sample_rate, n_fft=audio.n_fft,
                   hop_length=audio.hop_length, n_mels=audio.n_mels)


def _kept_length(length: int, runs: list[Run], answer: list[bool], cfg: OmniConfig) -> int:
    """All ``length`` tokens, or ``data.seq_length`` of them under ``data.truncate`` where that cut
    leaves every media run whole (half an image is a wrong sample) and an answer token to learn."""
    limit = cfg.data.seq_length
    if length <= limit:
        return length
    why = f"{length} tokens > data.seq_length={limit}"
    if not cfg.data.truncate:
        raise BadSample("too_long", why)
    if any(start < limit < end for _, start, end, _ in runs):
        raise BadSample("too_long", f"{why}; data.truncate would cut a media placeholder run in two")
    if not any(answer[1:limit + 1]):  # answer[t + 1]: the label at t is an answer token
        raise BadSample("too_long", f"{why}; data.truncate would leave no answer token to learn")
    return limit


def _chat_tokens(turns: list[dict], tokenizer: OmniTokenizer, expand: dict) -> tuple[list[int], list[bool], list[Run]]:
    """Chat-formatted token ids, whether each is trained on (assistant content and its
    ``<|end|>``), and the placeholders' runs in text order. ``expand`` maps a placeholder id to
    an iterator over its media: (pad id, pad count, encoder inputs)."""
    tokens: list[int] = []
    answer: list[bool] = []
    runs: list[Run] = []
    for turn in turns:
        is_answer = turn["role"] == "assistant"
        tokens.append(tokenizer.assistant_id if is_answer else tokenizer.user_id)
        for token in tokenizer.encode(turn["content"]):
            if token in expand:
                pad, count, media = next(expand[token])
                runs.append((pad, len(tokens), len(tokens) + count, media))
                tokens += [pad] * count
            else:
                tokens.append(token)
        tokens.append(tokenizer.end_id)
        answer += [False] + [is_answer] * (len(tokens) - len(answer) - 1)
    return tokens, answer, runs


def build_sample(raw: RawSample, tokenizer: OmniTokenizer, cfg: OmniConfig) -> Sample:
    """Raises :class:`BadSample` when the sample cannot be used (see ``BadSample.reason``)."""
    if raw.error is not None:  # its members were already found wanting (shards.py)
        raise raw.error
    turns = parse_conversation(raw.conversation)
    _check_placeholders(turns, raw, cfg, tokenizer)  # before decoding: cheap checks first
    merge, downsample = cfg.model.vision.merge_size, cfg.model.audio.downsample
    image_pad, audio_pad = tokenizer.image_pad_id, tokenizer.audio_pad_id

    def seen(pictures: list) -> tuple[int, int, list]:
        """A still image (one picture) or a video's frames: each picture with its time t."""
        pads = sum(vision_tokens(gh, gw, merge) for _, (gh, gw) in pictures)
        return image_pad, pads, [(picture, t) for t, picture in enumerate(pictures)]

    # Placeholder i of each kind takes medium i of that kind: as many pads as it yields encoder outputs.
    expand = {tokenizer.image_id: iter([seen([_image(data, cfg)]) for data in raw.images]),
              tokenizer.video_id: iter([seen(_video(frames, cfg)) for frames in raw.videos]),
              tokenizer.audio_id: iter([(audio_pad, audio_tokens(f.shape[0], downsample), [f])
                                        for f in (_audio_features(ext, data, cfg) for ext, data in raw.audios)])}
    tokens, answer, runs = _chat_tokens(turns, tokenizer, expand)
    keep = _kept_length(len(tokens), runs, answer, cfg)
    # A cut keeps the labels of the whole sample: the last kept token still predicts the next one.
    labels, loss = tokens[1:] + [tokenizer.pad_id], answer[1:] + [False]
    kept = [(pad, media) for pad, _, end, media in runs if end <= keep]
    framed = [item for pad, media in kept if pad == image_pad for item in media]
    images = [image for image, _ in framed]
    audios = [f for pad, media in kept if pad == audio_pad for f in media]

    if cfg.data.zero_media:  # the text-only control: same shapes and token counts, no content
        images = [(torch.zeros_like(p), grid) for p, grid in images]
        audios = [torch.zeros_like(f) for f in audios]
    return Sample(
        key=raw.key,
        tokens=torch.tensor(tokens[:keep], dtype=torch.long),
        labels=torch.tensor(labels[:keep], dtype=torch.long),
        loss_mask=torch.tensor(loss[:keep], dtype=torch.float32),
        images=images,
        image_times=[t for _, t in framed],
        audios=audios,
        truncated_from=len(tokens) if keep < len(tokens) else 0,
    )
