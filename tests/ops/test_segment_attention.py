"""Dense attention per segment length (``segment_attention``) against the block-masked SDPA over
the packed sequence, in float64: outputs and q/k/v gradients, with lengths that repeat (stacked
into one call), stand alone, and a zero-length segment."""

from __future__ import annotations

import torch

from megaomni.ops.attention import sdpa_attention, segment_attention


def test_segment_attention_equals_the_block_masked_reference():
    gen = torch.Generator().manual_seed(0)
    lengths = (5, 3, 5, 0, 7, 3, 5)
    t, heads, dim = sum(lengths), 2, 8
    q, k, v = (torch.randn(t, heads, dim, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    upstream = torch.randn(t, heads, dim, generator=gen, dtype=torch.float64)

    out = segment_attention(q, k, v, lengths, scale=0.3)
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))

    cu = torch.tensor((0, *torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    ref = sdpa_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), causal=False, cu_seqlens=cu, scale=0.3)
    ref = ref[0].transpose(0, 1)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (q, k, v))

    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
