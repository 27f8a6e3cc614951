"""One raw sample -> model inputs: chat-formatted token ids with media placeholders expanded,
next-token labels, the answer loss mask, and decoded media.

The tokenizer frames each turn (megaomni/data/chat_format.py) and says what a placeholder becomes
(megaomni/data/media_tokens.py). Each modality (megaomni.media.registry) decodes its own members; a
placeholder expands to its pad token, once per LLM token its items become (a video: all its
frames' pads), between the tokens the tokenizer puts around them (``<|vision_start|>`` ...); with
``data.audio_in_video``, ``<video><audio>`` is a video and its audio track, interleaved
(megaomni/data/audio_in_video.py)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from megaomni.config import DataConfig, OmniConfig
from megaomni.data import audio_in_video
from megaomni.data.positions import mrope_positions
from megaomni.data.shards import RawSample
from megaomni.data.sizes import SampleSizes
from megaomni.data.tokenizer import Tokenizer, reserved_tokens
from megaomni.errors import BadSample
from megaomni.media import registry
from megaomni.media.modality import MediaItem

ROLES = ("user", "assistant")
Run = tuple[str, int, int, list]  # one placeholder's pads: (modality, start, end, its items)
Span = tuple[int, int]  # one placeholder's tokens, its pads and the tokens around them: (start, end)


@dataclass
class Sample:
    """``labels[t]`` = ``tokens[t + 1]`` (pad at the end); ``loss_mask[t]`` = 1 where ``labels[t]``
    belongs to an assistant answer or its closing end token (``<|end|>``, ``<|im_end|>``)."""

    key: str
    tokens: torch.Tensor  # long [L]
    labels: torch.Tensor  # long [L]
    loss_mask: torch.Tensor  # float [L]
    media: dict[str, list[MediaItem]] = field(default_factory=dict)  # modality -> items in placeholder order
    truncated_from: int = 0  # the length before data.truncate cut it to data.seq_length; 0: not cut
    # long [3, L] multimodal RoPE positions (model.llm.mrope_section set); None: 0..L-1.
    positions: Optional[torch.Tensor] = None

    def sizes(self) -> SampleSizes:
        return SampleSizes.of(self.tokens.numel(), {name: [item.rows for item in items]
                                                    for name, items in self.media.items()})


def parse_conversation(data: bytes | None, reserved: Sequence[str] | None = None) -> list[dict]:
    """The turns of a sample's JSON; ``reserved``: the tokens content may not hold (the
    tokenizer's ``reserved_tokens``; None: megaomni's sentencepiece format's)."""
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
        if found := [t for t in (reserved_tokens() if reserved is None else reserved) if t in turn["content"]]:
            raise BadSample("reserved_token", f"{turn['role']} content contains {found[0]}")
    answers = [turn["content"] for turn in turns if turn["role"] == "assistant"]
    if not answers:
        raise BadSample("no_answer", "no assistant turn to learn from")
    if not all(answer.strip() for answer in answers):
        raise BadSample("no_answer", "an empty assistant turn (it would teach to answer nothing)")
    return turns


def _check_placeholders(turns: list[dict], raw: RawSample, cfg: OmniConfig, tokenizer: Tokenizer) -> None:
    for modality, source in registry.sources():
        placeholder, count = source.placeholder, raw.count(source)
        if any(placeholder in t["content"] for t in turns if t["role"] == "assistant"):
            raise BadSample("placeholder_mismatch", f"{placeholder} in an assistant turn")
        found = sum(t["content"].count(placeholder) for t in turns)
        if found:
            tokenizer.expansion(placeholder)  # raises unsupported_media where the tokenizer has no tokens for it
        if found != count and raw.unread:
            raise BadSample("unsupported_media", f"{found} {placeholder} placeholders for {count} readable files; "
                            f"not read: {', '.join(raw.unread)} ({_readable()})")
        if found != count:
            what = (f"{source.one_medium}s (a sample holds one: KEY.{source.field}.0.{source.exts[0]}, ...)"
                    if source.one_medium else "files")
            raise BadSample("placeholder_mismatch", f"{found} {placeholder} placeholders for {count} {what}")
        if count and not modality.enabled(cfg.model):
            raise BadSample("modality_disabled", f"sample has {placeholder} but model.{modality.name}.enabled=false")


def _readable() -> str:
    """What the shard reader decodes, by kind: "image: png, jpg, jpeg; ..."."""
    return "; ".join(f"{source.kind}: {', '.join(source.exts)}" for _, source in registry.sources())


def _kept_length(length: int, spans: list[Span], answer: list[bool], data: DataConfig) -> int:
    """All ``length`` tokens, or ``data.seq_length`` of them under ``data.truncate`` where that cut
    leaves every placeholder's span whole (half an image is a wrong sample) and an answer token to
    learn."""
    limit = data.seq_length
    if length <= limit:
        return length
    why = f"{length} tokens > data.seq_length={limit}"
    if not data.truncate:
        raise BadSample("too_long", why)
    if any(start < limit < end for start, end in spans):
        raise BadSample("too_long", f"{why}; data.truncate would cut a media placeholder run in two")
    if not any(answer[1:limit + 1]):  # answer[t + 1]: the label at t is an answer token
        raise BadSample("too_long", f"{why}; data.truncate would leave no answer token to learn")
    return limit


def _chat_tokens(turns: list[dict], tokenizer: Tokenizer, expand: dict[str, Iterator],
                 cfg: Optional[OmniConfig] = None) -> tuple[list[int], list[bool], list[Run], list[Span]]:
    """Chat-formatted token ids, whether each is trained on (an answer's content and the ids its
    frame trains after it: ``<|end|>``, ``<|im_end|>``), and the placeholders' runs of pads and
    spans, in text order. ``expand`` maps a placeholder to an iterator over its media: (modality,
    that medium's items). ``cfg``: where its ``data.audio_in_video`` pairs videos with clips."""
    tokens: list[int] = []
    answer: list[bool] = []
    runs: list[Run] = []
    spans: list[Span] = []
    for turn, frame in zip(turns, tokenizer.frames(tuple(turn["role"] for turn in turns))):
        is_answer = turn["role"] == "assistant"
        tokens += frame.before
        answer += [False] * len(frame.before)
        pieces = tokenizer.encode_content(turn["content"])
        for piece in audio_in_video.pair(pieces) if cfg is not None and cfg.data.audio_in_video else pieces:
            if isinstance(piece, tuple):  # a video and its audio track: one run, one span
                ids, track = audio_in_video.lay_out([next(expand[p]) for p in piece],
                                                    [tokenizer.expansion(p) for p in piece], cfg)
                runs.append((audio_in_video.NAME, len(tokens), len(tokens) + len(ids), track))
                spans.append((len(tokens), len(tokens) + len(ids)))
                tokens += ids
            elif isinstance(piece, str):  # a placeholder
                name, items = next(expand[piece])
                before, pad, after = tokenizer.expansion(piece)
                start, count = len(tokens) + len(before), sum(item.tokens for item in items)
                runs.append((name, start, start + count, items))
                spans.append((len(tokens), start + count + len(after)))
                tokens += [*before, *[pad] * count, *after]
            else:
                tokens.append(piece)
        tokens += frame.after
        answer += [is_answer] * (len(tokens) - len(answer) - len(frame.after))
        answer += [is_answer and i < frame.trained for i in range(len(frame.after))]
    return tokens, answer, runs, spans


def text_tokens(turns: list[dict], tokenizer: Tokenizer) -> list[int]:
    """The chat-formatted ids of parsed ``turns`` without their media (no pads; the tokens around
    them kept): what tools check a conversation with before its media are decoded. Raises
    :class:`BadSample` where ``tokenizer`` cannot take them: a placeholder it has no tokens for,
    roles its chat template cannot frame."""
    for _, source in registry.sources():
        if any(source.placeholder in turn["content"] for turn in turns):
            tokenizer.expansion(source.placeholder)  # raises unsupported_media where it has no tokens for it
    no_media = {source.placeholder: itertools.repeat(("", [])) for _, source in registry.sources()}
    return _chat_tokens(turns, tokenizer, no_media)[0]


def _layout(raw: RawSample, tokenizer: Tokenizer, cfg: OmniConfig, decode: bool):
    """The sample's token ids, answer flags, media runs and kept length, its media decoded (or,
    ``decode=False``, measured from headers). Raises :class:`BadSample`."""
    if raw.error is not None:  # its members were already found wanting (shards.py)
        raise raw.error
    turns = parse_conversation(raw.conversation, tokenizer.reserved_tokens)
    _check_placeholders(turns, raw, cfg, tokenizer)  # before decoding: cheap checks first
    # Placeholder i of a source takes medium i of that source: as many pads as its items yield
    # encoder outputs.
    expand = {}
    for modality, source in registry.sources():
        members = raw.members.get(source.placeholder, [])
        media = (modality.decode if decode else modality.measure)(source, members, cfg) if members else []
        expand[source.placeholder] = iter([(modality.name, items) for items in media])
    tokens, answer, runs, spans = _chat_tokens(turns, tokenizer, expand, cfg)
    return tokens, answer, runs, _kept_length(len(tokens), spans, answer, cfg.data)


def _kept_media(runs: list[Run], keep: int) -> dict[str, list[MediaItem]]:
    """Each modality's items whose runs the kept tokens hold whole (a cut drops the rest)."""
    media: dict[str, list[MediaItem]] = {m.name: [] for m in registry.modalities()}
    for name, _, end, items in runs:
        if end <= keep:  # a video with its track: the items of both
            for modality, its in items.media.items() if isinstance(items, audio_in_video.Track) else [(name, items)]:
                media[modality] += its
    return media


def measure_sample(raw: RawSample, tokenizer: Tokenizer, cfg: OmniConfig) -> tuple[SampleSizes, bool]:
    """What :func:`build_sample` would make of ``raw``, in sizes, without decoding its media; and
    whether data.truncate cut it. Raises :class:`BadSample` as it would, but for media whose
    bytes are bad past their headers (those fail only when decoded)."""
    tokens, _, runs, keep = _layout(raw, tokenizer, cfg, decode=False)
    media = {name: [item.rows for item in items] for name, items in _kept_media(runs, keep).items()}
    return SampleSizes.of(keep, media), keep < len(tokens)


def build_sample(raw: RawSample, tokenizer: Tokenizer, cfg: OmniConfig, media: bool = True) -> Sample:
    """Raises :class:`BadSample` when the sample cannot be used (see ``BadSample.reason``).
    ``media=False``: its media measured, not decoded (items without ``values``), for a rank that
    holds no encoder."""
    tokens, answer, runs, keep = _layout(raw, tokenizer, cfg, decode=media)
    # A cut keeps the labels of the whole sample: the last kept token still predicts the next one.
    labels, loss = tokens[1:] + [tokenizer.pad_id], answer[1:] + [False]
    media = _kept_media(runs, keep)
    if cfg.data.zero_media and media:  # the text-only control: same shapes and token counts, no content
        media = {name: [replace(item, values=torch.zeros_like(item.values)) for item in items]
                 for name, items in media.items()}
    positions = mrope_positions(len(tokens), runs, cfg)[:, :keep] if cfg.model.llm.mrope_section else None
    return Sample(
        key=raw.key,
        tokens=torch.tensor(tokens[:keep], dtype=torch.long),
        labels=torch.tensor(labels[:keep], dtype=torch.long),
        loss_mask=torch.tensor(loss[:keep], dtype=torch.float32),
        media={name: items for name, items in media.items() if items},
        truncated_from=len(tokens) if keep < len(tokens) else 0,
        positions=positions,
    )
