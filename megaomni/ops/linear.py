"""megatron-core's column- and row-parallel linears with a plain ``F.linear`` forward where there
is nothing parallel to do: one tensor-parallel rank, no sequence parallelism, no fused or deferred
weight gradients, no CPU offloading. There megatron's path is the same matmul behind two Python
autograd functions per call (and per backward), about four times the host time of the launch
itself; the encoders' calls are host-bound on a GPU (shared/notes/gpu-anchors.md), so this is
where their time goes. Parameters, attributes and checkpoints are megatron's; any other
configuration takes megatron's own forward.

``fold_bias`` (set on the linears of whole-compiled layers, megaomni.ops.kernels.compile_layers):
the bias goes into the GEMM (its epilogue) even where megatron-core asked for it back apart
(``skip_bias_add``), and the caller gets ``None`` for it, which megatron-core's bias + dropout +
residual and unfused activation paths take as "no bias". Inside a compiled layer the separate
bias add otherwise fuses its gradient (a sum over the tokens) into the activation's backward,
which inductor makes a reduction kernel 3x the baseline's pointwise one (vl_2b's ViT MLP,
benchmarks/NOTES.md)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear


class PlainLinear:
    """Decides, once, whether the layer can take the plain path (offloading can start later)."""

    fold_bias = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.config
        self.plain = (self.tp_group.size() == 1 and not self.sequence_parallel
                      and not self.gradient_accumulation_fusion and not config.defer_embedding_wgrad_compute)

    def _plain_forward(self, input_: torch.Tensor, weight: torch.Tensor):
        if self.skip_bias_add and not self.fold_bias:
            return F.linear(input_, weight), self.bias
        return F.linear(input_, weight, self.bias), None

    def _takes_plain(self) -> bool:
        return self.plain and self.config._cpu_offloading_context is None


class PlainColumnLinear(PlainLinear, ColumnParallelLinear):
    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None):
        if not self._takes_plain():
            return super().forward(input_, weight, runtime_gather_output)
        return self._plain_forward(input_, self.weight if weight is None else weight)


class PlainRowLinear(PlainLinear, RowParallelLinear):
    def forward(self, input_: torch.Tensor):
        if not self._takes_plain():
            return super().forward(input_)
        return self._plain_forward(input_, self.weight)
