"""Layer specs: Transformer Engine's when it is importable, otherwise megatron-core's local spec
with our SDPA attention core (megaomni.ops.attention)."""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megaomni.ops.attention import SDPAttention


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def _local_spec(mask_type: AttnMaskType) -> ModuleSpec:
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    attention = spec.submodules.self_attention
    attention.params = {"attn_mask_type": mask_type}
    attention.submodules.core_attention = SDPAttention
    return spec


def llm_layer_spec() -> ModuleSpec:
    """Causal decoder layer: RMSNorm, GQA self-attention with RoPE, SwiGLU MLP."""
    if have_transformer_engine():
        return get_gpt_layer_with_transformer_engine_spec()
    return _local_spec(AttnMaskType.causal)


def encoder_layer_spec() -> ModuleSpec:
    """Bidirectional layer for the encoders; always our core, since encoders pack several
    images/clips into one sequence with 2D positions (see megaomni.ops.attention)."""
    return _local_spec(AttnMaskType.no_mask)
