"""megatron-core's column- and row-parallel linears with a plain ``F.linear`` forward where there
is nothing parallel to do: one tensor-parallel rank, no sequence parallelism, no fused or deferred
weight gradients, no CPU offloading. There megatron's path is the same matmul behind two Python
autograd functions per call (and per backward), about four times the host time of the launch
itself; the encoders' calls are host-bound on a GPU (shared/notes/gpu-anchors.md), so this is
where their time goes. Parameters, attributes and checkpoints are megatron's; any other
configuration takes megatron's own forward."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


def _plain(layer) -> bool:
    config = layer.config
    return (layer.tp_group.size() == 1 and not layer.sequence_parallel and not layer.gradient_accumulation_fusion
            and not config.defer_embedding_wgrad_compute)


class PlainColumnLinear(ColumnParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plain = _plain(self)

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None):
        if not self.plain or self.config._cpu_offloading_context is not None:
            return super().forward(input_, weight, runtime_gather_output)
        bias = None if self.skip_bias_add else self.bias
        output = F.linear(input_, self.weight if weight is None else weight, bias)
        return output, self.bias if self.skip_bias_add else None


class PlainRowLinear(RowParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plain = _plain(self)

    def forward(self, input_: torch.Tensor):
        if not self.plain or self.config._cpu_offloading_context is not None:
            return super().forward(input_)
        bias = None if self.skip_bias_add else self.bias
        return F.linear(input_, self.weight, bias), self.bias if self.skip_bias_add else None
