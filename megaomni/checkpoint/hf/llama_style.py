"""Llama-style decoder LLMs: Llama (no biases), Qwen2 (biases on q, k, v), Qwen3 (RMSNorm of each
query and key head, a head dim of its own) and Qwen3-MoE (Qwen3 with a mixture of SwiGLU experts
behind a softmax top-k router in every layer), LLM only.

Their decoder is megaomni's: RMSNorm before attention and MLP, grouped-query attention with
rotate-half RoPE over position ids, SwiGLU, a final RMSNorm, a tied or separate output layer."""

from __future__ import annotations

from megaomni.checkpoint.hf.mapping import QKV, Direct, GatedMLP, Heads, MappingError

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                 "Qwen3MoeForCausalLM": "qwen3_moe"}

MEDIA = ()  # text only (tools/convert_hf.py verify's probe: a conversation's ids)
_LAYER = "llm.decoder.layers.{i}."
_HF = "model.layers.{i}."


def _rope_theta(hf: dict) -> float:
    rope = hf.get("rope_parameters") or {}
    kind = rope.get("rope_type", (hf.get("rope_scaling") or {}).get("rope_type", "default"))
    if kind != "default":
        raise MappingError(f"rope type {kind!r}: only plain RoPE (default) is supported")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_fields(hf: dict) -> dict:
    """The ``model`` sections of the Hugging Face ``config.json`` ``hf``: an LLM, no encoders."""
    kind = ARCHITECTURES[hf["architectures"][0]]
    return {"llm": llm_fields(hf, kind), "vision": {"enabled": False}, "audio": {"enabled": False}}


def llm_fields(hf: dict, kind: str) -> dict:
    """``model.llm`` fields of the Hugging Face ``config.json`` ``hf`` (an LLM's, or a
    multimodal model's ``text_config``) of LLM ``kind`` (a value of :data:`ARCHITECTURES`)."""
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
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
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=kind == "qwen2",
                qk_norm=kind in ("qwen3", "qwen3_moe"),
                head_dim=0 if head_dim * heads == hf["hidden_size"] else head_dim, moe=_moe(hf, kind))


def _moe(hf: dict, kind: str) -> dict:
    """Qwen3-MoE's experts as ``model.llm.moe`` fields (a dense model: none)."""
    if kind != "qwen3_moe":
        return {}
    if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
        raise MappingError(f"decoder_sparse_step={hf.get('decoder_sparse_step')}, mlp_only_layers="
                           f"{hf.get('mlp_only_layers')}: only an MoE MLP in every layer is supported")
    experts = hf.get("num_experts", hf.get("num_local_experts"))  # transformers 5 writes the latter
    return dict(num_experts=experts, top_k=hf["num_experts_per_tok"], layer_freq=1,
                ffn_hidden_size=hf["moe_intermediate_size"], normalize_top_k=bool(hf.get("norm_topk_prob", True)),
                aux_loss_coeff=float(hf.get("router_aux_loss_coef", 1e-3)))


def hf_config(model, architecture: str) -> dict:
    """The ``config.json`` of ``model`` (a ModelConfig: its LLM) as ``architecture``."""
    kind = ARCHITECTURES[architecture]
    return {"architectures": [architecture], "model_type": kind, **llm_config(model.llm, architecture, kind)}


def llm_config(llm, architecture: str, kind: str) -> dict:
    """The ``config.json`` fields of ``model.llm`` ``llm`` as the LLM ``kind`` of ``architecture``."""
    config = {"hidden_size": llm.hidden_size,
              "intermediate_size": llm.ffn_hidden_size, "num_hidden_layers": llm.num_layers,
              "num_attention_heads": llm.num_attention_heads, "num_key_value_heads": llm.num_query_groups,
              "vocab_size": llm.vocab_size, "max_position_embeddings": llm.max_seq_len, "rms_norm_eps": llm.norm_eps,
              "rope_theta": float(llm.rotary_base), "tie_word_embeddings": llm.tie_embeddings, "hidden_act": "silu",
              "torch_dtype": "float32", "head_dim": heads(llm).head_dim}
    moe = llm.moe
    if moe.enabled != (kind == "qwen3_moe") or (moe.enabled and (moe.layer_freq != 1 or
                                                                        moe.shared_expert_ffn_hidden_size)):
        raise MappingError(f"model.llm.moe: {architecture} has "
                           f"{'an MoE MLP, without a shared expert, in every layer' if moe.enabled else 'no experts'}")
    if moe.enabled:
        config.update(num_experts=moe.num_experts, num_experts_per_tok=moe.top_k, decoder_sparse_step=1,
                      moe_intermediate_size=moe.ffn_hidden_size or llm.ffn_hidden_size, mlp_only_layers=[],
                      norm_topk_prob=moe.normalize_top_k, router_aux_loss_coef=moe.aux_loss_coeff)
    for field, wanted in (("qkv_bias", kind == "qwen2"), ("qk_norm", kind in ("qwen3", "qwen3_moe"))):
        if getattr(llm, field) != wanted:
            raise MappingError(f"model.llm.{field}={str(getattr(llm, field)).lower()}: {architecture} "
                               f"{'has' if wanted else 'has no'} {field.replace('_', ' ')}")
    return config


def heads(llm) -> Heads:
    head_dim = llm.head_dim or llm.hidden_size // llm.num_attention_heads
    return Heads(llm.num_attention_heads, llm.num_query_groups, head_dim)


def rules(model) -> list:
    """The name map of ``model`` (a ModelConfig: its LLM)."""
    return llm_rules(model.llm)


def llm_rules(llm) -> list:
    """The name map of ``model.llm`` ``llm``."""
    table = [
        Direct("llm.embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        Direct(_LAYER + "input_layernorm.weight", _HF + "input_layernorm.weight"),
        QKV(_LAYER + "self_attention.linear_qkv.weight", _HF + "self_attn.q_proj.weight",
            _HF + "self_attn.k_proj.weight", _HF + "self_attn.v_proj.weight", heads(llm)),
        Direct(_LAYER + "self_attention.linear_proj.weight", _HF + "self_attn.o_proj.weight"),
        Direct(_LAYER + "pre_mlp_layernorm.weight", _HF + "post_attention_layernorm.weight"),
        Direct("llm.decoder.final_layernorm.weight", "model.norm.weight"),
    ]
    if llm.moe.enabled:  # {e}: every expert
        expert, theirs = _LAYER + "mlp.experts.local_experts.{e}.", _HF + "mlp.experts.{e}."
        table += [Direct(_LAYER + "mlp.router.weight", _HF + "mlp.gate.weight"),
                  GatedMLP(expert + "linear_fc1.weight", theirs + "gate_proj.weight", theirs + "up_proj.weight"),
                  Direct(expert + "linear_fc2.weight", theirs + "down_proj.weight")]
    else:
        table += [GatedMLP(_LAYER + "mlp.linear_fc1.weight", _HF + "mlp.gate_proj.weight", _HF + "mlp.up_proj.weight"),
                  Direct(_LAYER + "mlp.linear_fc2.weight", _HF + "mlp.down_proj.weight")]
    if llm.qk_norm:
        table += [Direct(_LAYER + "self_attention.q_layernorm.weight", _HF + "self_attn.q_norm.weight"),
                  Direct(_LAYER + "self_attention.k_layernorm.weight", _HF + "self_attn.k_norm.weight")]
    if llm.qkv_bias:
        table.append(QKV(_LAYER + "self_attention.linear_qkv.bias", _HF + "self_attn.q_proj.bias",
                         _HF + "self_attn.k_proj.bias", _HF + "self_attn.v_proj.bias", heads(llm)))
    if not llm.tie_embeddings:
        table.append(Direct("llm.output_layer.weight", "lm_head.weight"))
    return table


def hf_inputs(sample, hf_config, cfg) -> dict:
    """The Hugging Face model's keyword inputs of ``sample`` (made under ``cfg``): its ids."""
    return {"input_ids": sample.tokens[None]}
