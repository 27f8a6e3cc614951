"""The gradient accumulate's GPU kernel (megaomni.ops.grad_accumulate) bit-equal to ATen's
``add_``, its reference (tests/training/test_ddp_hook.py runs the hook that calls it)."""

from __future__ import annotations

import pytest
import torch

from megaomni.ops import grad_accumulate


@pytest.mark.skipif(not torch.cuda.is_available() or grad_accumulate.triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_is_bit_equal_to_aten_add(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    # An odd length, one past a block, and views at an offset into one buffer (as DDP's main_grads are).
    buffer = torch.randn(1 + 4097 + 1_000_003, device="cuda", generator=gen)
    for start, n in [(0, 1), (1, 4097), (4098, 1_000_003)]:
        main, grad = buffer[start:start + n], torch.randn(n, device="cuda", generator=gen).to(dtype)
        want = main.clone().add_(grad)
        assert grad_accumulate.takes_kernel(main, grad)
        grad_accumulate.accumulate(main, grad)
        assert torch.equal(main, want), (start, n)
