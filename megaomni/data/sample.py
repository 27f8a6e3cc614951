"""One raw sample -> model inputs: chat-formatted token ids with media placeholders expanded,
next-token labels, the answer loss mask, and decoded media.

Each modality (megaomni.media.registry) decodes its own members; a placeholder expands to its
modality's pad token, once per LLM token its items become (a video: all its frames' pads)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from megaomni.config import DataConfig, OmniConfig
from megaomni.data.positions import mrope_positions
from megaomni.data.shards import RawSample
from megaomni.data.tokenizer import CHAT_TOKENS, OmniTokenizer
from megaomni.errors import BadSample
from megaomni.media import registry
from megaomni.media.modality import MediaItem

ROLES = ("user", "assistant")
Run = tuple[str, int, int, list]  # one placeholder's pads: (modality, start, end, its items)


@dataclass
class Sample:
    """``labels[t]`` = ``tokens[t + 1]`` (pad at the end); ``loss_mask[t]`` = 1 where ``labels[t]``
    belongs to an assistant answer or its closing ``<|end|>``."""

    key: str
    tokens: torch.Tensor  # long [L]
    labels: torch.Tensor  # long [L]
    loss_mask: torch.Tensor  # float [L]
    media: dict[str, list[MediaItem]] = field(default_factory=dict)  # modality -> items in placeholder order
    truncated_from: int = 0  # the length before data.truncate cut it to data.seq_length; 0: not cut
    # long [3, L] multimodal RoPE positions (model.llm.mrope_section set); None: 0..L-1.
    positions: Optional[torch.Tensor] = None


def reserved_tokens() -> tuple[str, ...]:
    """The format's own tokens, never in content: the modalities' pads and the chat tokens."""
    return (*(m.pad for m in registry.modalities()), *CHAT_TOKENS)


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
        if reserved := [t for t in reserved_tokens() if t in turn["content"]]:
            raise BadSample("reserved_token", f"{turn['role']} content contains {reserved[0]}")
    answers = [turn["content"] for turn in turns if turn["role"] == "assistant"]
    if not answers:
        raise BadSample("no_answer", "no assistant turn to learn from")
    if not all(answer.strip() for answer in answers):
        raise BadSample("no_answer", "an empty assistant turn (it would teach to answer nothing)")
    return turns


def _check_placeholders(turns: list[dict], raw: RawSample, cfg: OmniConfig, tokenizer: OmniTokenizer) -> None:
    for modality, source in registry.sources():
        placeholder, count = source.placeholder, raw.count(source)
        if any(placeholder in t["content"] for t in turns if t["role"] == "assistant"):
            raise BadSample("placeholder_mismatch", f"{placeholder} in an assistant turn")
        found = sum(t["content"].count(placeholder) for t in turns)
        if found and tokenizer.token_id(placeholder) is None:
            raise BadSample("unsupported_media", f"tokenizer {tokenizer.path} has no {placeholder} token (trained "
                            f"before {source.one_medium or source.kind} support; a tokenizer trained now has it)")
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


def _kept_length(length: int, runs: list[Run], answer: list[bool], data: DataConfig) -> int:
    """All ``length`` tokens, or ``data.seq_length`` of them under ``data.truncate`` where that cut
    leaves every media run whole (half an image is a wrong sample) and an answer token to learn."""
    limit = data.seq_length
    if length <= limit:
        return length
    why = f"{length} tokens > data.seq_length={limit}"
    if not data.truncate:
        raise BadSample("too_long", why)
    if any(start < limit < end for _, start, end, _ in runs):
        raise BadSample("too_long", f"{why}; data.truncate would cut a media placeholder run in two")
    if not any(answer[1:limit + 1]):  # answer[t + 1]: the label at t is an answer token
        raise BadSample("too_long", f"{why}; data.truncate would leave no answer token to learn")
    return limit


def _chat_tokens(turns: list[dict], tokenizer: OmniTokenizer, expand: dict) -> tuple[list[int], list[bool], list[Run]]:
    """Chat-formatted token ids, whether each is trained on (assistant content and its
    ``<|end|>``), and the placeholders' runs in text order. ``expand`` maps a placeholder id to
    an iterator over its media: (modality, pad id, that medium's items)."""
    tokens: list[int] = []
    answer: list[bool] = []
    runs: list[Run] = []
    for turn in turns:
        is_answer = turn["role"] == "assistant"
        tokens.append(tokenizer.assistant_id if is_answer else tokenizer.user_id)
        for token in tokenizer.encode(turn["content"]):
            if token in expand:
                name, pad, items = next(expand[token])
                count = sum(item.tokens for item in items)
                runs.append((name, len(tokens), len(tokens) + count, items))
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
    # Placeholder i of a source takes medium i of that source: as many pads as its items yield
    # encoder outputs.
    expand = {}
    for modality, source in registry.sources():
        members = raw.members.get(source.placeholder, [])
        media = modality.decode(source, members, cfg) if members else []
        if (token := tokenizer.token_id(source.placeholder)) is not None:
            pad = tokenizer.media_pad_id(modality.name)
            expand[token] = iter([(modality.name, pad, items) for items in media])
    tokens, answer, runs = _chat_tokens(turns, tokenizer, expand)
    keep = _kept_length(len(tokens), runs, answer, cfg.data)
    # A cut keeps the labels of the whole sample: the last kept token still predicts the next one.
    labels, loss = tokens[1:] + [tokenizer.pad_id], answer[1:] + [False]
    media: dict[str, list[MediaItem]] = {m.name: [] for m in registry.modalities()}
    for name, _, end, items in runs:
        if end <= keep:
            media[name] += items
    if cfg.data.zero_media:  # the text-only control: same shapes and token counts, no content
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
