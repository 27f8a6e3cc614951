"""megatron-core's ``DistributedDataParallel`` with its per-parameter gradient hook's add (each
micro-batch's bf16 gradient into the fp32 ``main_grad``) through megaomni.ops.grad_accumulate:
one vectorised kernel on a GPU where ATen's mixed-dtype add is not. Everything else (buckets,
reductions, ``no_sync``, the hook's bookkeeping) is megatron-core's: the add is done first and
``param.grad`` cleared, so megatron-core's own hook, run after, finds nothing left to add.

Without overlapped reduction the hook has nothing to do but that add, so a backward pass may do it
itself: the parameters are marked for megaomni.ops.grouped_gemm, whose MoE expert weights then
skip autograd's accumulation and the hook altogether."""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel
from megatron.core.transformer.cuda_graphs import is_graph_capturing

from megaomni.ops.grad_accumulate import accumulate
from megaomni.ops.grouped_gemm import ADDS_IN_BACKWARD


class OmniDDP(DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.ddp_config.overlap_grad_reduce:
            for param in self.param_to_bucket_group:
                setattr(param, ADDS_IN_BACKWARD, True)

    def _make_backward_post_hook(self, param: torch.nn.Parameter):
        megatron_hook = super()._make_backward_post_hook(param)
        if self.ddp_config.overlap_grad_reduce:  # megatron-core's hook then needs param.grad itself
            return megatron_hook

        def hook(*unused):
            grad = param.grad
            if (grad is not None and param in self.param_to_bucket_group and not is_graph_capturing()
                    and (not param.grad_added_to_main_grad or getattr(param, "zero_out_wgrad", False))):
                accumulate(param.main_grad, grad.data)
                param.grad = None
            megatron_hook(*unused)

        return hook
