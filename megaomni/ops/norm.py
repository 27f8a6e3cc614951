"""RMSNorm and LayerNorm for megatron-core layer specs without Transformer Engine.

megatron-core's local spec wraps ``torch.nn.RMSNorm`` and refuses sequence parallelism. Under
sequence parallelism a norm sees only this rank's slice of the sequence, so its weight gradient
is partial: the weight is marked ``sequence_parallel`` and megatron-core's
``finalize_model_grads`` sums it over the tensor-parallel ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class LayerNorm(RMSNorm):
    """LayerNorm with a bias (the Whisper, CLIP and Qwen2-VL vision towers)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(config, hidden_size, eps)
        self.bias = nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        self.bias.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
