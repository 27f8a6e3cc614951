"""megatron-core ``TransformerConfig`` for one transformer stack (LLM or an encoder)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.activations import quick_gelu
from megatron.core.transformer.transformer_config import TransformerConfig

from megaomni.config import MoEConfig, TrainConfig
from megaomni.ops.kernels import compiled

# megaomni.config's names -> megatron-core's norm, and (activation, gated): SwiGLU gates one half by the other.
NORM_NAMES = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}
ACTIVATION_FUNCS = {"swiglu": (F.silu, True), "gelu": (F.gelu, False),
               "gelu_tanh": (partial(F.gelu, approximate="tanh"), False), "quick_gelu": (quick_gelu, False)}


def make_transformer_config(
    *,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    ffn_hidden_size: int,
    norm_eps: float,
    num_query_groups: int | None = None,
    head_dim: int = 0,
    init_std: float = 0.02,
    bf16: bool = False,
    cpu_init: bool = True,
    norm: str = "rmsnorm",
    activation: str = "swiglu",
    bias: bool = False,
    fusion: bool = False,
    **extra,
) -> TransformerConfig:
    """``norm`` (:data:`NORM_NAMES`), ``activation`` (:data:`ACTIVATION_FUNCS`), biases on every linear or
    none, no dropout; ``fusion``: megatron-core's compiled bias/dropout/residual and activation
    fusions where it has them, the activation compiled here where not (megaomni.ops.kernels).

    ``extra`` holds the remaining ``TransformerConfig`` fields: the parallel layout (from
    :mod:`megaomni.parallel.layout`) and MoE settings (:func:`moe_config_fields`)."""
    activation_func, gated = ACTIVATION_FUNCS[activation]
    # megatron-core fuses SwiGLU, and GELU with a bias; the other activations are compiled alone.
    megatron_fused = fusion and (activation == "swiglu" or (activation == "gelu" and bias))
    if fusion and not megatron_fused:
        activation_func = compiled(activation_func)
    return TransformerConfig(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_query_groups=num_query_groups or num_attention_heads,
        ffn_hidden_size=ffn_hidden_size,
        kv_channels=head_dim or hidden_size // num_attention_heads,
        normalization=NORM_NAMES[norm],
        layernorm_epsilon=norm_eps,
        gated_linear_unit=gated,
        activation_func=activation_func,
        add_bias_linear=bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_std,
        bias_activation_fusion=megatron_fused,
        bias_dropout_fusion=fusion,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        calculate_per_token_loss=True,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=cpu_init,
        **extra,
    )


def moe_config_fields(moe: MoEConfig, ffn_hidden_size: int) -> dict:
    """``TransformerConfig`` fields of an MoE LLM (none for a dense one)."""
    if not moe.enabled:
        return {}
    fields = dict(
        num_moe_experts=moe.num_experts,
        moe_router_topk=moe.top_k,
        moe_layer_freq=moe.layer_freq,
        moe_ffn_hidden_size=moe.ffn_hidden_size or ffn_hidden_size,
        moe_shared_expert_intermediate_size=moe.shared_expert_ffn_hidden_size or None,
        moe_token_dispatcher_type=moe.token_dispatcher,
        moe_grouped_gemm=False,
        moe_router_dtype="fp32",
        # Softmax over the top-k logits (renormalised top-k weights), or over all before top-k.
        moe_router_pre_softmax=not moe.normalize_top_k,
        moe_permute_fusion=False,
    )
    if moe.balancing == "aux_loss":
        fields.update(moe_router_load_balancing_type="aux_loss", moe_aux_loss_coeff=moe.aux_loss_coeff)
    elif moe.balancing == "aux_loss_free":
        # DeepSeek-V3's per-expert routing bias, nudged after each step toward even loads;
        # megatron-core implements it for sigmoid router scores only.
        fields.update(moe_router_load_balancing_type="none", moe_router_enable_expert_bias=True,
                      moe_router_bias_update_rate=moe.bias_update_rate, moe_router_score_function="sigmoid")
    else:
        fields.update(moe_router_load_balancing_type="none")
    return fields



def recompute_fields(train: TrainConfig, part: str) -> dict:
    """``train.recompute`` as ``TransformerConfig`` fields for the stack named ``part``."""
    if train.recompute == "none" or (train.recompute_parts and part not in train.recompute_parts):
        return {}
    if train.recompute == "full":  # every layer its own recompute unit
        return dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return dict(recompute_granularity="selective", recompute_modules=list(train.recompute_modules))
