"""The plain linears (``megaomni.ops.linear``) against megatron-core's at one tensor-parallel
rank: same outputs, returned bias and gradients (input, weight, bias) in float64."""

from __future__ import annotations

import pytest
import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.transformer_config import TransformerConfig

from megaomni.ops.linear import PlainColumnLinear, PlainRowLinear


def _config() -> TransformerConfig:
    return TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, params_dtype=torch.float64,
                             use_cpu_initialization=True)


def _run(layer, x, add_bias=False):
    """``add_bias``: the returned bias added to the output, as megatron-core's callers do."""
    x = x.clone().requires_grad_()
    out, bias = layer(x)
    if add_bias:
        out, bias = out + bias, None
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), bias, x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("bias, skip_bias_add, fold", [(False, False, False), (True, False, False),
                                                      (True, True, False), (True, True, True)])
@pytest.mark.parametrize("kind", ["column", "row"])
def test_plain_linear_equals_megatron(megatron_cpu, kind, bias, skip_bias_add, fold):
    """``fold``: the bias inside the GEMM, none returned; the output is megatron's plus its bias."""
    config = _config()
    megatron_cls, plain_cls = ((ColumnParallelLinear, PlainColumnLinear) if kind == "column"
                               else (RowParallelLinear, PlainRowLinear))
    extra = {"gather_output": False} if kind == "column" else {"input_is_parallel": True}
    layers = []
    for cls in (megatron_cls, plain_cls):
        torch.manual_seed(0)
        layers.append(cls(8, 12, config=config, init_method=torch.nn.init.normal_, bias=bias,
                          skip_bias_add=skip_bias_add, is_expert=False, **extra))
    assert layers[1].plain
    layers[1].fold_bias = fold
    x = torch.randn(5, 3, 8, dtype=torch.float64)
    want, got = _run(layers[0], x, add_bias=fold), _run(layers[1], x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-13, atol=1e-13)
    assert (got[1] is None) == (want[1] is None)
    torch.testing.assert_close(got[2], want[2], rtol=1e-13, atol=1e-13)
    assert got[3].keys() == want[3].keys()
    for name in want[3]:
        torch.testing.assert_close(got[3][name], want[3][name], rtol=1e-13, atol=1e-13)
