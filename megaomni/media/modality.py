"""What a modality is: the one object that knows a kind of media end to end.

A :class:`Modality` owns its placeholders and pad token, the shard members that hold its media
(:class:`Source`), how big each item is without decoding it (``measure``), how to decode it
(``decode``) into :class:`MediaItem` s, how items become one micro-batch's :class:`MediaBatch`
(``collate``), its encoder class, and the encoder's FLOPs. The data pipeline, the model, the
cost model and the pipeline planner ask it; none of them names a modality.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from megaomni.platform.transfer import to_device


@dataclass(frozen=True)
class Source:
    """One way a modality's media enter a sample: a placeholder in the text, and the shard
    members holding what it stands for. ``KEY.EXT`` / ``KEY.N.EXT`` (N in placeholder order),
    or with a ``field``, ``KEY.FIELD.N.EXT``."""

    placeholder: str  # as written in conversation text, e.g. "<image>"
    exts: tuple[str, ...]  # member extensions read, e.g. ("png", "jpg", "jpeg")
    kind: str  # what one member is called in messages: "image", "video frame", "audio"
    field: str = ""  # members KEY.FIELD.N.EXT; "" for KEY.EXT / KEY.N.EXT
    # The numbered members are the parts of one medium (a video's frames); a sample has at most one.
    one_medium: str = ""  # its name in messages ("video"); "": each member is one medium
    unread_exts: tuple[str, ...] = ()  # extensions of this kind not decoded: named when files are missing
    optional: bool = False  # tokenizers trained before it may lack the placeholder: its samples are skipped

    @property
    def member_exts(self) -> tuple[str, ...]:
        """Extensions as the shard reader sees them (``video.png`` for ``KEY.video.0.png``)."""
        return tuple(f"{self.field}.{e}" if self.field else e for e in self.exts)

    @property
    def unread_member_exts(self) -> tuple[str, ...]:
        return tuple(f"{self.field}.{e}" if self.field else e for e in self.unread_exts)


@dataclass
class MediaItem:
    """One encoder input: a still image, a video frame, an audio clip. ``rows``: its rows of
    encoder input (patches, log-mel frames); ``tokens``: the LLM tokens it becomes; ``size``: its
    shape as the encoder reads it (patch rows and columns; frames); ``info``: other per-item
    integers (a frame's time). ``values`` ``[rows, ...]``: None where only measured."""

    size: tuple[int, ...]
    rows: int
    tokens: int
    info: dict = field(default_factory=dict)
    values: Optional[torch.Tensor] = None


@dataclass
class MediaBatch:
    """One modality's items of a micro-batch, in placeholder order. ``values`` are every item's
    rows back to back (on the device); the rest is shape metadata that stays on the host, where
    reading it costs no GPU synchronisation: ``sizes`` ``[n, k]``, ``info`` (name -> ``[n]``; a
    name absent is 0 for every item), and per item its ``rows`` and LLM ``tokens``."""

    values: torch.Tensor
    sizes: torch.Tensor
    info: dict
    rows: tuple[int, ...]
    tokens: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> "MediaBatch":
        return replace(self, values=to_device(self.values, device))

    def pin_memory(self) -> "MediaBatch":
        """Values in page-locked memory, so that ``to(cuda)`` copies them asynchronously."""
        return replace(self, values=self.values.pin_memory())

    def select(self, chosen: list[int]) -> "MediaBatch":
        """Items ``chosen`` (in that order). Only the row indices cross to the device, asynchronously."""
        starts = [0]
        for n in self.rows:
            starts.append(starts[-1] + n)
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in chosen])
        return MediaBatch(self.values[to_device(rows, self.values.device)], self.sizes[chosen],
                          {k: v[chosen] for k, v in self.info.items()},
                          tuple(self.rows[i] for i in chosen), tuple(self.tokens[i] for i in chosen))

    @staticmethod
    def cat(parts: list["MediaBatch"]) -> "MediaBatch":
        """Several batches' items as one batch, in order."""
        if len(parts) == 1:
            return parts[0]
        keys = sorted({k for p in parts for k in p.info})
        return MediaBatch(torch.cat([p.values for p in parts]), torch.cat([p.sizes for p in parts]),
                          {k: torch.cat([p.info.get(k, torch.zeros(len(p), dtype=torch.long)) for p in parts])
                           for k in keys},
                          sum((p.rows for p in parts), ()), sum((p.tokens for p in parts), ()))


@dataclass(frozen=True)
class EncoderFlops:
    """Forward FLOPs of an encoder and its projector per item of ``r`` input rows, ``n = r *
    rows_per_input + extra_rows`` transformer rows: ``2 * params * n + attention * n^2`` (matmuls
    at 2 FLOPs per parameter per row; QK^T and AV over the whole item)."""

    params: float  # matmul parameters per transformer row
    attention: float  # 4 * layers * hidden: FLOPs per (query, key) pair
    rows_per_input: float = 1.0  # transformer rows per input row (a striding stem makes fewer)
    extra_rows: float = 0.0  # transformer rows of every item besides its inputs' (a class token)

    @classmethod
    def transformer(cls, section, llm_hidden: int, rows_per_input: float = 1.0,
                    projector_params: float | None = None, extra_rows: float = 0.0) -> "EncoderFlops":
        """A transformer encoder of ``section``'s layers (attention q, k, v, o and a 3-matrix
        gated MLP, or 2 matrices ungated) and its projector: ``projector_params`` per transformer
        row, by default a 2-layer MLP into the LLM's width (inner width ``projector_hidden_size``
        where the section has one, else the LLM's)."""
        h = section.hidden_size
        mlp = 3 if section.activation == "swiglu" else 2
        if projector_params is None:
            inner = getattr(section, "projector_hidden_size", 0) or llm_hidden
            projector_params = h * inner + inner * llm_hidden
        params = section.num_layers * (4 * h * h + mlp * h * section.ffn_hidden_size) + projector_params
        return cls(params, 4 * section.num_layers * h, rows_per_input, extra_rows)


class ImportedOnUse:
    """A class attribute naming a class (``"module:Name"``) that is imported when first read:
    encoders pull in megatron-core, which takes seconds to load, and configurations are checked
    (one-line errors) before it is."""

    def __init__(self, path: str):
        self.path = path

    def __get__(self, obj, owner=None):
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)


# model.<modality> fields of the encoder's architecture and its pixel / feature values: no item's
# size or token count follows them (everything else is assumed to, see Modality.size_fields).
VALUE_FIELDS = frozenset({
    "enabled", "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "rotary_base", "norm_eps",
    "norm", "activation", "bias", "projector_hidden_size", "temporal_embedding", "position_embedding", "pre_norm",
    "patch_bias", "feature_layer", "window_size", "full_attention_layers", "tokens_per_second", "max_positions",
    "in_channels", "image_mean", "image_std", "resample", "n_mels"})


class Modality(ABC):
    """The interface every modality implements (see the module docstring). ``name`` is also its
    config section (``model.<name>``, with an ``enabled`` field), its encoder's attribute
    (``<name>_encoder``) and its key in ``Batch.media``."""

    name: str
    pad: str  # the token repeated once per encoder output; the encoder's outputs replace them
    sources: tuple[Source, ...]
    section: type  # the dataclass of model.<name>
    encoder: type  # encoder(section, TransformerConfig, llm_hidden, pg_collection)(MediaBatch) -> [tokens, llm_hidden]
    budget: str = ""  # the DataConfig field capping its rows per packed micro-batch ("": none)
    rows_name: str = "rows"  # what its rows are called in messages

    @abstractmethod
    def decode(self, source: Source, members: list[tuple[str, bytes]], cfg) -> list[list[MediaItem]]:
        """A sample's members of ``source`` (``(ext, bytes)`` in order) -> for each placeholder,
        its items. Raises ``BadSample`` for bad media."""

    @abstractmethod
    def measure(self, source: Source, members: list[tuple[str, bytes]], cfg) -> list[list[MediaItem]]:
        """What :meth:`decode` gives, without ``values``: from headers only, no decode."""

    @abstractmethod
    def flops(self, section, llm_hidden: int) -> EncoderFlops:
        """The encoder's and projector's forward FLOPs per item."""

    def positions(self, items: list[MediaItem], start: int, cfg) -> torch.Tensor:
        """Multimodal RoPE positions ``[3, tokens]`` (temporal, height, width) of one placeholder's
        items, starting at ``start``; the text after them continues from their largest plus one.
        By default those of as many text tokens."""
        count = sum(item.tokens for item in items)
        return (start + torch.arange(count)).expand(3, count)

    def check(self, cfg) -> None:
        """Configuration rules of ``model.<name>`` (and the data fields it reads), one
        ``ConfigError`` line each; called when the section is enabled."""

    def collate(self, items: list[MediaItem]) -> MediaBatch:
        """Items of a micro-batch, in placeholder order, as one batch (no values where measured)."""
        keys = sorted(items[0].info)
        # Measured items (a rank without encoders) keep their sizes only.
        values = torch.cat([i.values for i in items]) if items[0].values is not None else torch.empty(0)
        return MediaBatch(values, torch.tensor([i.size for i in items], dtype=torch.long),
                          {k: torch.tensor([i.info[k] for i in items], dtype=torch.long) for k in keys},
                          tuple(i.rows for i in items), tuple(i.tokens for i in items))

    def enabled(self, model_cfg) -> bool:
        return getattr(model_cfg, self.name).enabled

    def size_fields(self, cfg) -> dict:
        """The ``model.<name>`` settings its items' sizes and tokens follow (what a data set's
        index records it was built with): all but :data:`VALUE_FIELDS`."""
        section = dataclasses.asdict(getattr(cfg.model, self.name))
        return {k: v for k, v in section.items() if k not in VALUE_FIELDS}
