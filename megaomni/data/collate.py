"""Samples -> one :class:`Batch`: right-padded rows (:func:`collate`) or one packed row
(:func:`collate_packed`); media packed in placeholder order either way."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from megaomni.data.batch import Batch
from megaomni.data.packing import cu_seqlens_and_positions
from megaomni.data.sample import Sample
from megaomni.media import registry
from megaomni.media.modality import MediaBatch

PAD_MULTIPLE = 8  # fewer distinct shapes, friendlier kernel sizes


def padded_length(samples: Sequence[Sample], max_length: Optional[int] = None,
                  multiple: int = PAD_MULTIPLE) -> int:
    """The longest sample rounded up to ``multiple``, but not past ``max_length`` (the model's
    sequence limit) when given."""
    longest = max(s.tokens.numel() for s in samples)
    length = -(-longest // multiple) * multiple
    return length if max_length is None else max(longest, min(length, max_length))


def collate(samples: Sequence[Sample], pad_id: int, max_length: Optional[int] = None,
            length: Optional[int] = None) -> Batch:
    """Right-pad to ``length`` (default: :func:`padded_length` of these samples)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    length = length or padded_length(samples, max_length)
    if length < max(s.tokens.numel() for s in samples):
        raise ValueError(f"collate: length {length} is shorter than the longest sample")
    b = len(samples)
    tokens = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((b, length), dtype=torch.float32)
    for i, s in enumerate(samples):
        n = s.tokens.numel()
        tokens[i, :n], labels[i, :n], loss_mask[i, :n] = s.tokens, s.labels, s.loss_mask

    if samples[0].positions is None:
        positions = torch.arange(length).expand(b, length).clone()
    else:  # padding counts on from the sample's last position (never attended to by the sample)
        positions = torch.stack([_padded(s.positions, length - s.tokens.numel()) for s in samples], dim=1)
    return Batch(tokens=tokens, labels=labels, loss_mask=loss_mask, position_ids=positions, num_samples=b,
                 media=_media(samples))


def collate_packed(samples: Sequence[Sample], pad_id: int, length: int) -> Batch:
    """One row of ``length`` tokens: the samples back to back, then padding as a segment of its
    own (``cu_seqlens`` covers the whole row, so every layout sees the same segments)."""
    if not samples:
        raise ValueError("collate_packed needs at least one sample")
    lengths = [s.tokens.numel() for s in samples]
    used = sum(lengths)
    if used > length:
        raise ValueError(f"collate_packed: {used} tokens do not fit a row of {length}")
    segments = lengths + ([length - used] if used < length else [])
    cu_seqlens, positions = cu_seqlens_and_positions(segments)
    pad = (length - used,)
    tokens = torch.cat([s.tokens for s in samples] + [torch.full(pad, pad_id, dtype=torch.long)])
    labels = torch.cat([s.labels for s in samples] + [torch.full(pad, pad_id, dtype=torch.long)])
    loss_mask = torch.cat([s.loss_mask for s in samples] + [torch.zeros(pad)])
    if samples[0].positions is not None:  # each sample's own, then the padding segment's from 0
        positions = torch.cat([s.positions for s in samples] + [torch.arange(pad[0]).expand(3, -1)], dim=1)[:, None]
    else:
        positions = positions[None]
    return Batch(tokens=tokens[None], labels=labels[None], loss_mask=loss_mask[None], position_ids=positions,
                 cu_seqlens=cu_seqlens, num_samples=len(samples), media=_media(samples))


def _padded(positions: torch.Tensor, count: int) -> torch.Tensor:
    """``[3, n]`` positions and ``count`` more after the last."""
    return torch.cat([positions, positions[:, -1:] + 1 + torch.arange(count).expand(3, -1)], dim=1)


def _media(samples: Sequence[Sample]) -> dict[str, MediaBatch]:
    """The samples' media, each modality's concatenated in placeholder order."""
    media = {}
    for modality in registry.modalities():
        items = [item for s in samples for item in s.media.get(modality.name, ())]
        if items:
            media[modality.name] = modality.collate(items)
    return media
