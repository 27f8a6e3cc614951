"""``main_grad += grad``: a bf16 (or fp16) gradient into its fp32 accumulator, what megatron-core's
DDP hook does for every parameter in every micro-batch (megaomni.training.ddp). ATen's add of
mixed dtypes takes its unvectorised kernel (vl_2b on an H200: 85 ms of every two steps, against
28 ms for the plain-PyTorch baseline's bf16 ``.grad`` accumulation; benchmarks/NOTES.md). With
Triton on a GPU it is one vectorised kernel at memory speed; elsewhere ATen's ``add_``, which is
the reference: both add the gradient converted to fp32, so the results are bit-equal."""

from __future__ import annotations

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
