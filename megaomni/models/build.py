"""Build the omni model from configuration (one place that knows which parts exist)."""

from __future__ import annotations

from typing import Callable, Optional

from megaomni.config import OmniConfig
from megaomni.layers.transformer_config import make_transformer_config, moe_config_fields, recompute_fields
from megaomni.media import registry
from megaomni.models.initial_weights import draws_deferred, reinit_llm, seeded
from megaomni.models.llm import build_llm
from megaomni.models.omni import OmniModel, whole_sequence
from megaomni.ops.kernels import compile_layers, fuse_megatron_rotary, kernels


def _stack_config(part, bf16: bool, **extra):
    return make_transformer_config(
        num_layers=part.num_layers,
        hidden_size=part.hidden_size,
        num_attention_heads=part.num_attention_heads,
        ffn_hidden_size=part.ffn_hidden_size,
        norm_eps=part.norm_eps,
        bf16=bf16,
        **extra,
    )


def build_model(cfg: OmniConfig, vocab_size: int, media_pad_id: Callable[[str], int], *,
                llm_parallel: Optional[dict] = None, encoder_parallel: Optional[dict] = None,
                encoder_pg_collection=None, pre_process: bool = True, post_process: bool = True,
                vp_stage: Optional[int] = None, shard_sequence: Callable = whole_sequence,
                with_encoders: Optional[bool] = None) -> OmniModel:
    """One stage of the omni model; encoders where ``with_encoders`` (default: ``pre_process``,
    the first stage).

    ``media_pad_id(modality)`` gives the token id an encoder's outputs replace, or a tuple of them
    (a tokenizer's ``media_pad_ids``), for each enabled modality's name (``"vision"``, ``"audio"``). ``llm_parallel`` /
    ``encoder_parallel`` are the ``TransformerConfig`` fields of the parallel layout
    (megaomni.parallel.layout) and ``encoder_pg_collection`` the encoders' process groups;
    absent, the model is built for one process."""
    llm_cfg = cfg.model.llm
    chosen = kernels(cfg)
    fuse_megatron_rotary(chosen.fusion)
    # The layout's fields come last: they may adjust MoE settings to the layout.
    fields = {**moe_config_fields(llm_cfg.moe, llm_cfg.ffn_hidden_size), **(llm_parallel or {})}
    # Plain RoPE: all rotary frequencies from the first of the three position axes.
    head_dim = llm_cfg.head_dim or llm_cfg.hidden_size // llm_cfg.num_attention_heads
    mrope = llm_cfg.mrope_section or [head_dim // 2, 0, 0]
    llm_config = _stack_config(llm_cfg, cfg.train.bf16, num_query_groups=llm_cfg.num_query_groups,
                               head_dim=head_dim, init_std=llm_cfg.init_std, mrope_section=mrope,
                               add_qkv_bias=llm_cfg.qkv_bias, qk_layernorm=llm_cfg.qk_norm,
                               fusion=chosen.fusion, **recompute_fields(cfg.train, "llm"), **fields)
    with draws_deferred(llm_config):
        llm = build_llm(llm_cfg, llm_config, vocab_size, pre_process, post_process, vp_stage, chosen.loss)
    reinit_llm(llm, cfg.train.seed)  # the same weights under every layout (megaomni.models.initial_weights)
    encoders, encoder_pads = {}, {}
    if pre_process if with_encoders is None else with_encoders:
        for modality in registry.enabled(cfg.model):
            part = getattr(cfg.model, modality.name)
            config = _stack_config(part, cfg.train.bf16, init_std=llm_cfg.init_std, norm=part.norm,
                                   activation=part.activation, bias=part.bias, fusion=chosen.fusion,
                                   attention_backend=chosen.encoder_attention,
                                   **recompute_fields(cfg.train, modality.name), **(encoder_parallel or {}))
            with seeded(cfg.train.seed, f"{modality.name}_encoder"):  # drawn alike wherever it is built
                encoders[modality.name] = modality.encoder(part, config, llm_cfg.hidden_size, encoder_pg_collection)
            pads = media_pad_id(modality.name)
            encoder_pads[modality.name] = (pads,) if isinstance(pads, int) else tuple(pads)
    model = OmniModel(cfg.model, llm, encoders, encoder_pads, shard_sequence)
    parts = {"llm": [llm], "encoders": list(encoders.values())}
    for name in chosen.whole_layers:
        for part in parts[name]:
            compile_layers(part)
    return model


def padded_vocab_size(tokenizer_vocab: int, configured: int, multiple: int = 64) -> int:
    size = max(configured, tokenizer_vocab)  # never fewer rows than the tokenizer has ids
    return -(-size // multiple) * multiple
