"""Initial weights follow ``train.seed`` alone (megaomni.models.initial_weights): the global
random state before the build changes nothing, another seed changes every random weight, and the
draws keep megatron-core's distributions (N(0, init_std), output projections N(0, init_std /
sqrt(2 * num_layers)), norms ones). Across layouts: tests/parallel/test_init_layout.py."""

from __future__ import annotations

import math

import pytest
import torch

from tests.models.test_parts import VOCAB, small_config


def _build(seed: int, global_state: int) -> dict[str, torch.Tensor]:
    from megaomni.models.build import build_model

    cfg = small_config()
    cfg.train.seed = seed
    torch.manual_seed(global_state)
    model = build_model(cfg, VOCAB, {"vision": 5, "audio": 6}.__getitem__)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}


def test_weights_follow_the_seed_alone(megatron_cpu):
    first, same, other = _build(7, 0), _build(7, 1), _build(8, 0)
    assert first.keys() == same.keys() and any(k.startswith("vision_encoder.") for k in first)
    for key, value in first.items():
        assert torch.equal(value, same[key]), key
    random = [k for k in first if k.endswith(".weight") and "norm" not in k]
    assert random and all(not torch.equal(first[k], other[k]) for k in random)


def test_distributions_are_megatron_cores(megatron_cpu):
    cfg, weights = small_config(), _build(7, 0)
    std, layers = cfg.model.llm.init_std, cfg.model.llm.num_layers
    llm = {k: v for k, v in weights.items() if k.startswith("llm.")}
    for key, value in llm.items():
        if "norm" in key:
            assert torch.equal(value, torch.ones_like(value)), key
        elif key.endswith(("linear_proj.weight", "linear_fc2.weight")):
            # ~1000-5000 draws each: the sample std within 10%.
            assert value.std().item() == pytest.approx(std / math.sqrt(2 * layers), rel=0.1), key
        else:
            assert value.mean().abs().item() < std / 5 and value.std().item() == pytest.approx(std, rel=0.1), key


def test_megatron_cores_draws_are_skipped_while_the_llm_is_built(megatron_cpu, monkeypatch):
    """reinit_llm draws every random LLM weight, so megatron-core's own draws are skipped while the
    LLM is built (they doubled an MoE LLM's build); its init path still marks the
    tensor-parallel weights, and the config's init functions are its own again afterwards."""
    from megaomni.models import build, initial_weights

    drawn, inside = [], []
    original_normal = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_",
                        lambda t, *a, **k: (inside and drawn.append(t.numel())) or original_normal(t, *a, **k))
    original_build = build.build_llm

    def counted(*args, **kwargs):
        inside.append(True)
        try:
            return original_build(*args, **kwargs)
        finally:
            inside.clear()

    monkeypatch.setattr(build, "build_llm", counted)
    model = build.build_model(small_config(), VOCAB, {"vision": 5, "audio": 6}.__getitem__)
    assert drawn == []
    linears = {n: p for n, p in model.llm.named_parameters() if n.endswith(("linear_qkv.weight", "linear_fc2.weight"))}
    assert linears and all(getattr(p, "tensor_model_parallel", None) for p in linears.values()), list(linears)
    config = model.llm.config
    assert all(getattr(config, f) is not initial_weights._drawn_later
               for f in ("init_method", "output_layer_init_method", "embedding_init_method"))
