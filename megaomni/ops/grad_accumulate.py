"""``main_grad += grad``: a bf16 (or fp16) gradient into its fp32 accumulator, what megatron-core's
DDP hook does for every parameter in every micro-batch (megaomni.training.ddp). ATen's add of
mixed dtypes takes its unvectorised kernel (vl_2b on an H200: 85 ms of every two steps, against
28 ms for the plain-PyTorch baseline's bf16 ``.grad`` accumulation; benchmarks/NOTES.md). With
Triton on a GPU it is one vectorised kernel at memory speed; elsewhere ATen's ``add_``, which is
the reference: both add the gradient converted to fp32, so the results are bit-equal.

``accumulate_groups`` does the same for many parameters at once from one stacked gradient (an MoE
layer's experts, megaomni.ops.grouped_gemm): one kernel over a table of their ``main_grad``
addresses, where one call per expert would cost a launch and a hook each (768 a layer)."""

from __future__ import annotations

import functools
from typing import Sequence

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheels of torch come without Triton
    triton = None

BLOCK = 4096

if triton is not None:
    @triton.jit
    def _add_into(dst, src, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        total = tl.load(dst + offsets, mask=mask) + tl.load(src + offsets, mask=mask).to(tl.float32)
        tl.store(dst + offsets, total, mask=mask)

    @triton.jit
    def _add_into_each(dst_addresses, src, n, BLOCK: tl.constexpr):
        group = tl.program_id(1)
        dst = tl.load(dst_addresses + group).to(tl.pointer_type(tl.float32))
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        grad = tl.load(src + group.to(tl.int64) * n + offsets, mask=mask).to(tl.float32)
        tl.store(dst + offsets, tl.load(dst + offsets, mask=mask) + grad, mask=mask)


def takes_kernel(main_grad: torch.Tensor, grad: torch.Tensor) -> bool:
    return (triton is not None and main_grad.is_cuda and main_grad.dtype == torch.float32
            and grad.dtype in (torch.bfloat16, torch.float16) and main_grad.shape == grad.shape
            and main_grad.is_contiguous() and grad.is_contiguous())


def accumulate(main_grad: torch.Tensor, grad: torch.Tensor) -> None:
    """``main_grad.add_(grad)`` in place."""
    if not takes_kernel(main_grad, grad):
        main_grad.add_(grad)
        return
    n = grad.numel()
    _add_into[(triton.cdiv(n, BLOCK),)](main_grad, grad, n, BLOCK=BLOCK)


@functools.lru_cache(maxsize=256)
def _address_table(addresses: tuple, device: torch.device) -> torch.Tensor:
    # Keyed by the addresses themselves, so a hit is always right; DDP's main_grads are views of
    # one buffer that never moves, so each MoE linear's table is copied to the device once.
    return torch.tensor(addresses, dtype=torch.int64).to(device)


def accumulate_groups(main_grads: Sequence[torch.Tensor], grads: torch.Tensor) -> None:
    """``main_grads[g].add_(grads[g])`` in place for every g; ``grads`` stacked, ``(groups, ...)``."""
    if not (len(main_grads) == grads.shape[0] and grads.is_contiguous()
            and all(takes_kernel(m, grads[0]) for m in main_grads)):
        for main_grad, grad in zip(main_grads, grads):
            accumulate(main_grad, grad)
        return
    n = grads[0].numel()
    table = _address_table(tuple(m.data_ptr() for m in main_grads), grads.device)
    _add_into_each[(triton.cdiv(n, BLOCK), len(main_grads))](table, grads, n, BLOCK=BLOCK)
