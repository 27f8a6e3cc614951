"""megatron-core ``TransformerConfig`` for one transformer stack (LLM or an encoder)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


def make_transformer_config(
    *,
    num_layers: int,
    hidden_size: int,
    num_attention_heads: int,
    ffn_hidden_size: int,
    norm_eps: float,
    num_query_groups: int | None = None,
    init_std: float = 0.02,
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    bf16: bool = False,
    cpu_init: bool = True,
) -> TransformerConfig:
    """RMSNorm + SwiGLU + no biases + no dropout; fusions off (they need CUDA/TE kernels)."""
    return TransformerConfig(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_query_groups=num_query_groups or num_attention_heads,
        ffn_hidden_size=ffn_hidden_size,
        kv_channels=hidden_size // num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_std,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        context_parallel_size=cp,
        calculate_per_token_loss=True,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=cpu_init,
    )
