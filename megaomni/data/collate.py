"""Samples -> one right-padded :class:`Batch`, media packed in placeholder order."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from megaomni.data.batch import Batch
from megaomni.data.sample import Sample

PAD_MULTIPLE = 8  # fewer distinct shapes, friendlier kernel sizes


def collate(samples: Sequence[Sample], pad_id: int, max_length: Optional[int] = None) -> Batch:
    """Pad to the longest sample rounded up to a multiple of 8, but not past ``max_length``
    (the model's sequence limit) when given."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    longest = max(s.tokens.numel() for s in samples)
    length = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    if max_length is not None:
        length = max(longest, min(length, max_length))
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
