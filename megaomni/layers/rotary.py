"""Rotary-embedding angle tables in megatron-core's layout (``[s, 1, 1, dim]``, the two halves
repeated for rotate-half), for positions we compute ourselves (per image / per clip), the
fixed sinusoidal table of the same frequencies (video frames' temporal positions), and Whisper's
sinusoidal position table."""

from __future__ import annotations

import math

import torch


def _inv_freq(dim: int, base: float, device=None) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def rope_1d(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Angles for integer ``positions [s]`` -> ``[s, 1, 1, head_dim]``."""
    angles = positions.float()[:, None] * _inv_freq(head_dim, base, positions.device)[None, :]
    return torch.cat([angles, angles], dim=-1)[:, None, None, :]


def rope_2d(positions: torch.Tensor, head_dim: int, base: float) -> torch.Tensor:
    """Angles for ``(row, col)`` ``positions [s, 2]`` -> ``[s, 1, 1, head_dim]``: a quarter of the
    frequencies rotate by the row, a quarter by the column (Qwen2-VL's vision RoPE)."""
    if head_dim % 4:
        raise ValueError(f"2D rotary embeddings need a head dim divisible by 4, got {head_dim}")
    inv = _inv_freq(head_dim // 2, base, positions.device)
    angles = torch.cat([positions[:, :1].float() * inv, positions[:, 1:].float() * inv], dim=-1)
    return torch.cat([angles, angles], dim=-1)[:, None, None, :]


def sinusoid_from_zero(positions: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """The Transformer's sinusoidal encoding ``[sin(p w), cos(p w)]`` of integer ``positions [s]``
    minus that of position 0 -> ``[s, dim]``: exactly 0 at position 0. ``cos - 1`` is computed as
    ``-2 sin^2(p w / 2)``, which keeps its precision at small angles."""
    if dim % 2:
        raise ValueError(f"a sinusoidal table needs an even width, got {dim}")
    angles = positions.float()[:, None] * _inv_freq(dim, base, positions.device)[None, :]
    return torch.cat([torch.sin(angles), -2.0 * torch.sin(angles / 2) ** 2], dim=-1)


def whisper_sinusoids(length: int, dim: int) -> torch.Tensor:
    """Whisper's position table ``[length, dim]``: ``[sin(p w), cos(p w)]`` with ``dim / 2``
    frequencies ``w`` from 1 down to 1/10000 (the last exactly 1/10000, unlike the Transformer's)."""
    if dim % 2 or dim < 4:
        raise ValueError(f"Whisper's sinusoidal table needs an even width of at least 4, got {dim}")
    inv = torch.exp(-math.log(10000.0) / (dim // 2 - 1) * torch.arange(dim // 2))
    angles = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)
