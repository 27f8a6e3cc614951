"""Grouped GEMM: the rows of ``x`` in consecutive groups, group g times weight g (an
``nn.Linear`` weight, out x in), in one call: an MoE layer's local experts over the tokens routed
to them. ``offsets[g]`` is where group g ends (non-decreasing, on any device; megatron-core's
dispatcher counts tokens on the host); an empty group gets a zero weight gradient.

Implementations (``model.llm.moe.grouped_gemm``):

- ``loop``: one matmul per group, the reference (megatron-core's ``SequentialMLP`` runs this; it
  needs the group sizes on the host, a device sync per MoE layer).
- ``torch``: ``torch._grouped_mm`` over the weights as one (groups, out, in) tensor: a view where
  they lie back to back in one storage (megaomni.layers.grouped_experts.pack_experts does that
  for training), else a stack built inside the call, and again in backward rather than kept
  (one copy of the expert weights in bandwidth per pass, not memory held through the step).
- ``cuda``: ``csrc/grouped_gemm.cu``, cuBLAS's grouped GEMM over pointers to each expert's weight:
  no stack at all. Built only where CUDA is (``megaomni._grouped_gemm_ext``); on the H200 it runs
  at 0.4-0.75x of ``torch._grouped_mm``, so ``auto`` does not pick it.

Under megaomni's DDP (megaomni.training.ddp marks the weights ``ADDS_IN_BACKWARD``) the ``torch``
path adds the weight gradients into the weights' fp32 ``main_grad`` itself, in one kernel
(megaomni.ops.grad_accumulate), and hands autograd none: otherwise each expert's gradient is one
more autograd accumulation and DDP hook on the host, 1,536 a layer's micro-batch for 128 experts.
"""

from __future__ import annotations

from typing import Sequence

import torch

from megaomni.config import ConfigError
from megaomni.ops.grad_accumulate import accumulate_groups

IMPLEMENTATIONS = ("auto", "cuda", "torch", "loop")
# Set on a parameter whose gradient a backward pass may add into its ``main_grad`` itself.
ADDS_IN_BACKWARD = "adds_grad_in_backward"

try:
    from megaomni import _grouped_gemm_ext
except ImportError:  # no CUDA build: the other implementations remain
    _grouped_gemm_ext = None


def torch_supports(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs for these tensors (CPU: fp32 / bf16; CUDA: bf16 on
    Hopper or newer, its CUTLASS kernel)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cpu":
        return dtype in (torch.float32, torch.bfloat16)
    return device.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (9, 0)


def cuda_supports(device: torch.device, dtype: torch.dtype) -> bool:
    return _grouped_gemm_ext is not None and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)


# At most this many local experts, ``auto`` keeps the loop: their GEMMs are large enough to run near
# the card's peak one by one, and stacking their weights costs more than the launches it saves
# (H200, bf16, 8192 tokens: Mixtral-8x7B's 8 experts loop 1.19x faster than torch._grouped_mm;
# DeepSeek-V2-Lite's 64 and Qwen3-30B-A3B's 128 run 2.0x and 4.9x faster grouped;
# benchmarks/results/grouped_gemm_nvidia-h200.json).
LOOP_UP_TO_EXPERTS = 8


def resolve(impl: str, device: torch.device, dtype: torch.dtype, num_groups: int) -> str:
    """``auto``: ``torch._grouped_mm`` where it runs and there are more than
    :data:`LOOP_UP_TO_EXPERTS` local experts, else the loop (the CUDA extension measured slower
    than ``torch._grouped_mm`` on every shape: an explicit choice). An explicit choice these
    tensors cannot take is a configuration error."""
    supported = {"cuda": cuda_supports(device, dtype), "torch": torch_supports(device, dtype), "loop": True}
    if impl == "auto":
        return "torch" if supported["torch"] and num_groups > LOOP_UP_TO_EXPERTS else "loop"
    if not supported[impl]:
        raise ConfigError(f"model.llm.moe.grouped_gemm={impl}: not available for {dtype} on {device} "
                          f"(use auto or loop{'; the CUDA extension is not built' if impl == 'cuda' else ''})")
    return impl


def grouped_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], offsets: torch.Tensor, impl: str) -> torch.Tensor:
    """``x`` (tokens, in) -> (tokens, out) with ``impl`` (a resolved name, not ``auto``). Rows
    whose length is not a multiple of 16 bytes (tiny test models) take the loop: the grouped
    kernels read rows in 16-byte pieces."""
    if impl == "loop" or not all(n * x.element_size() % 16 == 0 for n in (x.shape[1], weights[0].shape[0])):
        return loop_grouped_linear(x, weights, offsets)
    offsets = placed_offsets(offsets, x.device, impl)
    function = _CublasGroupedLinear if impl == "cuda" else _StackedGroupedLinear
    return function.apply(x, offsets, *weights)


def placed_offsets(offsets: torch.Tensor, device: torch.device, impl: str) -> torch.Tensor:
    """``offsets`` where ``impl`` reads them: on the host for cuBLAS (it takes the problem sizes
    there), int32 on ``device`` for ``torch._grouped_mm``. A no-op when they are already there, so
    a caller running several grouped GEMMs over the same groups places them once."""
    if impl == "cuda":
        return offsets.cpu()
    return offsets.to(device, torch.int32, non_blocking=True)


def loop_grouped_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], offsets: torch.Tensor) -> torch.Tensor:
    ends = offsets.tolist()
    sizes = [end - start for start, end in zip([0, *ends[:-1]], ends)]
    pieces = torch.split(x, sizes)
    return torch.cat([piece @ weight.t() for piece, weight in zip(pieces, weights)])


def stacked(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``weights`` (one linear's, all of one shape) as one (groups, out, in) tensor: a view of
    their storage when they lie in it back to back, in order (no copy), else ``torch.stack``."""
    first = weights[0]
    step = first.numel() * first.element_size()
    base = first.data_ptr()
    end = first.storage_offset() * first.element_size() + step * len(weights)
    if (first.is_contiguous() and first.untyped_storage().nbytes() >= end
            and [w.data_ptr() for w in weights] == list(range(base, base + step * len(weights), step))):
        return first.detach().as_strided((len(weights), *first.shape), (first.numel(), *first.stride()))
    return torch.stack(weights)


class _StackedGroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets, *weights):
        ctx.save_for_backward(x, offsets, *weights)
        adds = all(getattr(w, ADDS_IN_BACKWARD, False) and w.requires_grad for w in weights)
        ctx.main_grads = [w.main_grad for w in weights] if adds else None
        return torch._grouped_mm(x, stacked(weights).transpose(1, 2), offs=offsets)

    @staticmethod
    def backward(ctx, grad):
        x, offsets, *weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch._grouped_mm(grad, stacked(weights), offs=offsets) if ctx.needs_input_grad[0] else None
        # Groups along the contracted (token) dimension: one (out, in) gradient per group.
        grad_w = torch._grouped_mm(grad.t(), x, offs=offsets)
        if ctx.main_grads is not None:
            accumulate_groups(ctx.main_grads, grad_w)
            return grad_x, None, *[None] * len(weights)
        return grad_x, None, *grad_w.unbind(0)


class _CublasGroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, offsets, *weights):
        ctx.save_for_backward(x, offsets, *weights)
        return _grouped_gemm_ext.forward(x, list(weights), offsets)

    @staticmethod
    def backward(ctx, grad):
        x, offsets, *weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _grouped_gemm_ext.backward_input(grad, list(weights), offsets) if ctx.needs_input_grad[0] else None
        return grad_x, None, *_grouped_gemm_ext.backward_weight(grad, x, offsets)
