"""Projectors: map merged encoder features into the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    """Concatenate each group of ``merge`` consecutive features, then Linear-GELU-Linear, ``hidden``
    wide (0: ``out_size``; Qwen2-VL's merger: ``in_size * merge``)."""

    def __init__(self, in_size: int, out_size: int, merge: int = 1, hidden: int = 0):
        super().__init__()
        self.merge = merge
        self.fc1 = nn.Linear(in_size * merge, hidden or out_size)
        self.fc2 = nn.Linear(hidden or out_size, out_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n * merge, in]`` -> ``[n, out]``."""
        merged = features.reshape(-1, features.shape[-1] * self.merge)
        return self.fc2(nn.functional.gelu(self.fc1(merged)))


class PoolProjector(nn.Module):
    """Average each group of ``merge`` consecutive features, ``norm`` them, then one Linear
    (Qwen2-Audio's avg_pooler, layer_norm and projector)."""

    def __init__(self, in_size: int, out_size: int, merge: int, norm: nn.Module):
        super().__init__()
        self.merge = merge
        self.norm = norm
        self.linear = nn.Linear(in_size, out_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n * merge, in]`` -> ``[n, out]``."""
        return self.linear(self.norm(features.reshape(-1, self.merge, features.shape[-1]).mean(dim=1)))
