"""Projectors: map merged encoder features into the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    """Concatenate each group of ``merge`` consecutive features, then Linear-GELU-Linear."""

    def __init__(self, in_size: int, out_size: int, merge: int = 1):
        super().__init__()
        self.merge = merge
        self.fc1 = nn.Linear(in_size * merge, out_size)
        self.fc2 = nn.Linear(out_size, out_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[n * merge, in]`` -> ``[n, out]``."""
        merged = features.reshape(-1, features.shape[-1] * self.merge)
        return self.fc2(nn.functional.gelu(self.fc1(merged)))
