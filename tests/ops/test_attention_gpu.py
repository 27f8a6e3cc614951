"""The GPU fast path of the attention core (torch's flash varlen kernel) against the exact
block-mask path, bf16: causal (packed LLM rows) and bidirectional (images/clips), GQA, both
layouts. Runs where CUDA is (the device machine); skipped on CPU-only CI."""

from __future__ import annotations

import pytest
import torch

from megaomni.ops.attention import packed_params, sdpa_attention, varlen_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("hq, hkv", [(8, 8), (8, 2)])
def test_varlen_matches_block_mask(causal, hq, hkv):
    gen = torch.Generator(device="cuda").manual_seed(0)
    lengths = torch.tensor([300, 17, 1024, 5, 700], device="cuda")
    params = packed_params(torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32))
    t, d = int(lengths.sum()), 64
    q, k, v = (torch.randn(t, h, d, device="cuda", dtype=torch.bfloat16, generator=gen, requires_grad=True)
               for h in (hq, hkv, hkv))
    fast = varlen_attention(q, k, v, params.cu_seqlens_q, params.max_seqlen_q, causal=causal, scale=d**-0.5)
    assert fast is not None
    exact = sdpa_attention(*(x.float().transpose(0, 1)[None] for x in (q, k, v)), causal=causal,
                           cu_seqlens=params.cu_seqlens_q, scale=d**-0.5)[0].transpose(0, 1)
    torch.testing.assert_close(fast.float(), exact, rtol=2e-2, atol=2e-2)
    grad = torch.randn_like(exact)
    fast_grads = torch.autograd.grad(fast.float(), (q, k, v), grad)
    exact_grads = torch.autograd.grad(exact, (q, k, v), grad)
    for got, want in zip(fast_grads, exact_grads):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)
