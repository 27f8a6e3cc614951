"""Samples -> one right-padded :class:`Batch`, media packed in placeholder order."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from megaomni.data.batch import Batch
from megaomni.data.sample import Sample

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

    images = [image for s in samples for image in s.images]
    audios = [features for s in samples for features in s.audios]
    return Batch(
        tokens=tokens,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=torch.arange(length).expand(b, length).clone(),
        image_patches=torch.cat([p for p, _ in images]) if images else None,
        image_grids=torch.tensor([grid for _, grid in images], dtype=torch.long) if images else None,
        audio_features=torch.cat(audios) if audios else None,
        audio_lengths=torch.tensor([f.shape[0] for f in audios], dtype=torch.long) if audios else None,
        num_samples=b,
    )
