"""Hugging Face Llama-style LLMs (Llama, Qwen2, Qwen3, Qwen3-MoE) in and out: a tiny random model built from a
``transformers`` config (no download), imported into megaomni, gives the Hugging Face model's
logits (fp32, 1e-4); exported back, every tensor is bit-exact and ``from_pretrained`` loads it."""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import (  # noqa: E402
    import_hf,
    load_state,
    model_config,
    read_hf,
)
from megaomni.checkpoint.hf.mapping import MappingError  # noqa: E402
from megaomni.config import OmniConfig  # noqa: E402
from tests.checkpoint.round_trip import export_and_reload, save_perturbed  # noqa: E402

VOCAB = 256
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)
FAMILIES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(rope_theta=1000000.0)),
    "qwen2_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, dict(rope_theta=500000.0)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=16)),
    # Qwen3's real shapes: query heads x head dim wider than the hidden size (0.6B: 16 x 128 > 1024)
    "qwen3_wide_heads": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(head_dim=32)),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)),
    "qwen3_moe_unnormalised": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                               dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                    decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=False)),
}


def hf_model(name: str, folder) -> torch.nn.Module:
    config_cls, model_cls, extra = FAMILIES[name]
    torch.manual_seed(0)
    model = model_cls(config_cls(**SHAPE, **extra)).float().eval()
    save_perturbed(model, folder, ("norm",))
    return model


def megaomni_llm(sections: dict, state: dict):
    from megaomni.models.build import build_model

    cfg = OmniConfig(model=model_config(sections))
    model = build_model(cfg, cfg.model.llm.vocab_size, lambda name: 0)
    load_state(model, state)
    return cfg, model.eval()


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        return model.llm(input_ids=tokens, position_ids=positions.unsqueeze(0).expand(3, -1, -1), attention_mask=None)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_import_gives_hugging_face_logits_and_export_is_exact(megatron_cpu, tmp_path, name):
    hf = hf_model(name, tmp_path / "hf")
    imported = import_hf(str(tmp_path / "hf"))
    architecture, sections, state = imported.architecture, imported.sections, imported.state
    assert architecture == type(hf).__name__
    cfg, model = megaomni_llm(sections, state)
    tokens = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(tokens).logits
    got = logits(model, tokens)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()

    reloaded = export_and_reload(cfg.model, model, imported, tmp_path, type(hf))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, want)


def test_bad_checkpoints_fail_with_one_line(tmp_path):
    hf_model("qwen2", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    _, tensors = read_hf(str(tmp_path / "hf"))

    def folder(name: str, cfg: dict, weights: dict) -> str:
        from megaomni.checkpoint.hf.convert import write_hf
        write_hf(str(tmp_path / name), cfg, weights)
        return str(tmp_path / name)

    cases = [
        (folder("arch", {**config, "architectures": ["GPT2LMHeadModel"]}, tensors), "architecture GPT2LMHeadModel"),
        (folder("lacks", config, {k: v for k, v in tensors.items() if "layers.1.mlp" not in k}),
         "lacks 3 weights the model needs: model.layers.1.mlp.down_proj.weight"),
        (folder("extra", config, {**tensors, "model.vision.weight": torch.zeros(1)}),
         "1 weights of the checkpoint map to nothing: model.vision.weight"),
        (folder("act", {**config, "hidden_act": "gelu"}, tensors), "hidden_act='gelu'"),
        (folder("bias", {**config, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                         "attention_bias": True}, tensors), "attention_bias / mlp_bias=true"),
        (str(tmp_path / "nowhere"), "no config.json"),
    ]
    for path, message in cases:
        with pytest.raises(MappingError, match=message) as e:
            import_hf(path)
        assert "\n" not in str(e.value)
    os.remove(tmp_path / "lacks" / "model.safetensors")
    with pytest.raises(MappingError, match="neither model.safetensors"):
        import_hf(str(tmp_path / "lacks"))


def test_a_shape_that_does_not_fit_the_config(megatron_cpu, tmp_path):
    hf_model("qwen2", tmp_path / "hf")
    imported = import_hf(str(tmp_path / "hf"))
    sections, state = imported.sections, imported.state
    sections["llm"]["ffn_hidden_size"] = 96
    with pytest.raises(RuntimeError, match="size mismatch for llm.decoder.layers.0.mlp.linear_fc1.weight"):
        megaomni_llm(sections, state)
