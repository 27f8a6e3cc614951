"""An MoE layer whose experts run as grouped GEMMs (megaomni.layers.grouped_experts) against
megatron-core's per-expert loop (SequentialMLP) with the same weights: the same parameters and
names, outputs and gradients (fp32, CPU: torch._grouped_mm); packed (``pack_experts``), the
same with the weights read in place, not stacked."""

from __future__ import annotations

import pytest
import torch

from megaomni.config import MoEConfig

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="megatron-core on the CPU (tests/models/conftest.py)")


def _moe_layer(grouped_gemm: str):
    from megatron.core.transformer.spec_utils import build_module

    from megaomni.layers.specs import llm_block_spec
    from megaomni.layers.transformer_config import make_transformer_config, moe_config_fields

    moe = MoEConfig(num_experts=4, top_k=2, ffn_hidden_size=48)
    config = make_transformer_config(num_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
                                     norm_eps=1e-6, bf16=False, **moe_config_fields(moe, 64))
    torch.manual_seed(0)
    return build_module(llm_block_spec(config, grouped_gemm=grouped_gemm).layer_specs[0].submodules.mlp,
                        config=config)


@pytest.mark.parametrize("packed", [False, True], ids=["apart", "packed"])
def test_grouped_experts_equal_the_loop(megatron_cpu, monkeypatch, packed):
    from megaomni.layers.grouped_experts import pack_experts
    from megaomni.ops import grouped_gemm

    in_place = []
    original = grouped_gemm.stacked

    def recorded(weights):
        out = original(weights)
        in_place.append(out.untyped_storage().data_ptr() == weights[0].untyped_storage().data_ptr())
        return out

    monkeypatch.setattr(grouped_gemm, "stacked", recorded)
    loop, grouped = _moe_layer("loop"), _moe_layer("torch")
    assert type(loop.experts).__name__ == "SequentialMLP" and type(grouped.experts).__name__ == "GroupedExperts"
    assert loop.state_dict().keys() == grouped.state_dict().keys()
    # Other weights: equal outputs are not equal initialisation.
    with torch.no_grad():
        for p in grouped.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    loop.load_state_dict(grouped.state_dict())
    names = {n: p for n, p in grouped.named_parameters()}
    if packed:
        pack_experts(grouped)
        assert {n: p for n, p in grouped.named_parameters()} == names  # the same parameter objects
        assert loop.state_dict().keys() == grouped.state_dict().keys()
        mine = grouped.state_dict()
        for key, value in loop.state_dict().items():
            assert value is None or torch.equal(value, mine[key]), key
    x = torch.randn(24, 2, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    outputs = []
    for layer in (loop, grouped):
        y, _ = layer(x)
        outputs.append((y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    assert grouped.experts._resolved == "torch"
    assert in_place == [packed] * 4  # two linears, forward and backward
    (y_loop, g_loop), (y_grouped, g_grouped) = outputs
    torch.testing.assert_close(y_grouped, y_loop, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_grouped, g_loop):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
