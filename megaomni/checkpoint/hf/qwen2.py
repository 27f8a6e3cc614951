"""Llama-style decoder LLMs: Qwen2 (biases on q, k, v) and Llama (no biases), LLM only.

Their decoder is megaomni's: RMSNorm before attention and MLP, grouped-query attention with
rotate-half RoPE over position ids, SwiGLU, a final RMSNorm, a tied or separate output layer."""

from __future__ import annotations

from megaomni.checkpoint.hf.mapping import QKV, Direct, GatedMLP, Heads, MappingError

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}

_LAYER = "llm.decoder.layers.{i}."
_HF = "model.layers.{i}."


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or {}
    kind = rope.get("rope_type", (hf.get("rope_scaling") or {}).get("rope_type", "default"))
    if kind != "default":
        raise MappingError(f"rope type {kind!r}: only plain RoPE (default) is supported")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def llm_fields(hf: dict) -> dict:
    """``model.llm`` fields of the Hugging Face ``config.json`` ``hf``."""
    heads = hf["num_attention_heads"]
    if hf.get("head_dim", hf["hidden_size"] // heads) * heads != hf["hidden_size"]:
        raise MappingError(f"head_dim={hf['head_dim']} * num_attention_heads={heads} != hidden_size="
                           f"{hf['hidden_size']}: megaomni's attention takes hidden_size / heads")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise MappingError("attention_bias / mlp_bias=true: Llama's biases on every projection are not supported "
                           "(Qwen2's q, k, v biases are)")
    if hf.get("hidden_act", "silu") != "silu":
        raise MappingError(f"hidden_act={hf['hidden_act']!r}: only SwiGLU (silu) MLPs are supported")
    theta = _rope_theta(hf)
    if theta != int(theta):
        raise MappingError(f"rope_theta={theta}: megatron-core's GPTModel takes an integer base")
    return dict(num_layers=hf["num_hidden_layers"], hidden_size=hf["hidden_size"], num_attention_heads=heads,
                num_query_groups=hf.get("num_key_value_heads", heads), ffn_hidden_size=hf["intermediate_size"],
                vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 4096),
                rotary_base=int(theta), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=hf.get("model_type") == "qwen2")


def hf_config(llm, architecture: str) -> dict:
    """The ``config.json`` of ``model.llm`` ``llm`` as ``architecture``."""
    model_type = ARCHITECTURES[architecture]
    config = {"architectures": [architecture], "model_type": model_type, "hidden_size": llm.hidden_size,
              "intermediate_size": llm.ffn_hidden_size, "num_hidden_layers": llm.num_layers,
              "num_attention_heads": llm.num_attention_heads, "num_key_value_heads": llm.num_query_groups,
              "vocab_size": llm.vocab_size, "max_position_embeddings": llm.max_seq_len, "rms_norm_eps": llm.norm_eps,
              "rope_theta": float(llm.rotary_base), "tie_word_embeddings": llm.tie_embeddings, "hidden_act": "silu",
              "torch_dtype": "float32"}
    if llm.qkv_bias != (model_type == "qwen2"):
        raise MappingError(f"model.llm.qkv_bias={str(llm.qkv_bias).lower()}: {architecture} has "
                           f"{'q, k, v biases' if model_type == 'qwen2' else 'no biases'}")
    return config


def heads(llm) -> Heads:
    return Heads(llm.num_attention_heads, llm.num_query_groups, llm.hidden_size // llm.num_attention_heads)


def rules(llm) -> list:
    """The name map of ``model.llm`` ``llm``."""
    table = [
        Direct("llm.embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        Direct(_LAYER + "input_layernorm.weight", _HF + "input_layernorm.weight"),
        QKV(_LAYER + "self_attention.linear_qkv.weight", _HF + "self_attn.q_proj.weight",
            _HF + "self_attn.k_proj.weight", _HF + "self_attn.v_proj.weight"),
        Direct(_LAYER + "self_attention.linear_proj.weight", _HF + "self_attn.o_proj.weight"),
        Direct(_LAYER + "pre_mlp_layernorm.weight", _HF + "post_attention_layernorm.weight"),
        GatedMLP(_LAYER + "mlp.linear_fc1.weight", _HF + "mlp.gate_proj.weight", _HF + "mlp.up_proj.weight"),
        Direct(_LAYER + "mlp.linear_fc2.weight", _HF + "mlp.down_proj.weight"),
        Direct("llm.decoder.final_layernorm.weight", "model.norm.weight"),
    ]
    if llm.qkv_bias:
        table.append(QKV(_LAYER + "self_attention.linear_qkv.bias", _HF + "self_attn.q_proj.bias",
                         _HF + "self_attn.k_proj.bias", _HF + "self_attn.v_proj.bias"))
    if not llm.tie_embeddings:
        table.append(Direct("llm.output_layer.weight", "lm_head.weight"))
    return table
