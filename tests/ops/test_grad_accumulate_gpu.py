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


@pytest.mark.skipif(not torch.cuda.is_available() or grad_accumulate.triton is None, reason="needs CUDA and Triton")
def test_grouped_kernel_is_bit_equal_to_aten_add_each():
    """Experts' main_grads as DDP lays them out: views of one buffer, in reverse order, with other
    parameters between them; one stacked bf16 gradient."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    groups, shape, gap = 5, (48, 4100), 37
    size = shape[0] * shape[1]
    buffer = torch.randn(groups * (size + gap), device="cuda", generator=gen)
    mains = [buffer[(groups - 1 - g) * (size + gap):][:size].view(shape) for g in range(groups)]
    grads = torch.randn(groups, *shape, device="cuda", generator=gen).to(torch.bfloat16)
    want = buffer.clone()
    for g in range(groups):
        want[(groups - 1 - g) * (size + gap):][:size].add_(grads[g].flatten())
    grad_accumulate.accumulate_groups(mains, grads)
    assert torch.equal(buffer, want)
