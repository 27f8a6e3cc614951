"""Multimodal RoPE position ids of one sample (Qwen2-VL's rule): text tokens count up by one on
all three axes; a placeholder's media take their modality's grid of positions
(``Modality.positions``) from where the text stands, and the text after them resumes one past
the largest position the media took. A video with its audio track (its run's items a
:class:`~megaomni.data.audio_in_video.Track`) takes its own rule, that module's."""

from __future__ import annotations

import torch

from megaomni.data import audio_in_video
from megaomni.media import registry


def mrope_positions(length: int, runs: list, cfg) -> torch.Tensor:
    """``[3, length]`` positions of a sample of ``length`` tokens whose media fill ``runs``
    (``(modality, start, end, items)`` in text order, as :mod:`megaomni.data.sample` makes them)."""
    parts, position, done = [], 0, 0
    for name, start, end, items in runs:
        parts.append(position + torch.arange(start - done).expand(3, -1))
        if isinstance(items, audio_in_video.Track):
            grid, after = audio_in_video.positions(items, position + start - done, cfg)
        else:
            grid = registry.get(name).positions(items, position + start - done, cfg)
            after = int(grid.max()) + 1 if grid.numel() else position + start - done
        parts.append(grid)
        position, done = after, end
    parts.append(position + torch.arange(length - done).expand(3, -1))
    return torch.cat(parts, dim=1)
