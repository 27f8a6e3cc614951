"""Layer specs: Transformer Engine's when it is importable, otherwise megatron-core's local
modules with our SDPA attention core (megaomni.ops.attention) and RMSNorm (megaomni.ops.norm)."""

from __future__ import annotations

import copy
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from megaomni.layers.grouped_experts import GroupedExperts
from megaomni.ops.attention import SDPAttention
from megaomni.ops.linear import PlainColumnLinear, PlainRowLinear
from megaomni.ops.norm import LayerNorm, RMSNorm

NORM_MODULES = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def _local(spec: ModuleSpec, mask_type: AttnMaskType, norm: type = RMSNorm, grouped_gemm: str = "loop") -> ModuleSpec:
    """A local-spec layer with our attention core, norms and linears (``ops.linear``: megatron's
    where tensor parallelism needs them); MoE experts as grouped GEMMs unless ``grouped_gemm``
    is ``loop`` (``model.llm.moe.grouped_gemm``)."""
    spec = copy.deepcopy(spec)
    spec.submodules.input_layernorm = norm
    spec.submodules.pre_mlp_layernorm = norm
    attention = spec.submodules.self_attention
    attention.params = {"attn_mask_type": mask_type}
    attention.submodules.core_attention = SDPAttention
    for qk in ("q_layernorm", "k_layernorm"):  # QK-norm (config.qk_layernorm): ours too
        if getattr(attention.submodules, qk, IdentityOp) is not IdentityOp:
            setattr(attention.submodules, qk, RMSNorm)
    attention.submodules.linear_qkv = PlainColumnLinear
    attention.submodules.linear_proj = PlainRowLinear
    mlp = spec.submodules.mlp
    if getattr(mlp, "module", None) is MLP:  # MoE layers keep their own expert modules
        mlp.submodules.linear_fc1 = PlainColumnLinear
        mlp.submodules.linear_fc2 = PlainRowLinear
    experts = getattr(getattr(mlp, "submodules", None), "experts", None)
    if experts is not None and experts.module is SequentialMLP and grouped_gemm != "loop":
        experts.module, experts.params = GroupedExperts, {"impl": grouped_gemm}
    return spec


def llm_block_spec(config: TransformerConfig, vp_stage: Optional[int] = None,
                   pp_rank: Optional[int] = None, grouped_gemm: str = "loop") -> TransformerBlockSubmodules:
    """The causal decoder layers this (virtual) pipeline stage builds: RMSNorm, GQA
    self-attention with RoPE, SwiGLU MLP, or an MoE MLP where ``config.moe_layer_freq`` says."""
    te = have_transformer_engine()
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=te, normalization="RMSNorm",
                                       vp_stage=vp_stage, pp_rank=pp_rank)
    if not te:
        block.layer_specs = [_local(s, AttnMaskType.causal, grouped_gemm=grouped_gemm) for s in block.layer_specs]
        block.layer_norm = RMSNorm
    return block


def encoder_layer_spec(norm: str = "rmsnorm") -> ModuleSpec:
    """Bidirectional layer for the encoders, with ``norm`` (a ``NORM_MODULES`` name); always our
    core, since encoders pack several images/clips into one sequence with 2D positions (see
    megaomni.ops.attention)."""
    return _local(get_gpt_layer_local_spec(normalization="RMSNorm"), AttnMaskType.no_mask, NORM_MODULES[norm])
