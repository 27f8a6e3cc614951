"""Qwen2.5-VL: Qwen2-VL's tower (megaomni.checkpoint.hf.qwen2_vl) with RMSNorm blocks, a gated
SwiGLU MLP with biases, windowed attention (windows of ``window_size`` pixels a side, the
``fullatt_block_indexes`` layers over the whole image) and an RMSNorm before the merger, into a
Qwen2 LLM whose multimodal RoPE spaces a video's temporal groups by time
(``tokens_per_second`` positions per second).

In megaomni: the vision encoder with those options as configuration (model.vision.window_size,
full_attention_layers, tokens_per_second; a group's seconds from data.video_fps)."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf import llama_style, qwen2_vl
from megaomni.checkpoint.hf.mapping import Direct, GatedMLP, MappingError
from megaomni.checkpoint.hf.qwen2_vl import OURS, THEIRS

ARCHITECTURES = {"Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl"}
MEDIA = qwen2_vl.MEDIA

# Hugging Face's defaults where a config.json leaves them out (Qwen2_5_VLVisionConfig's).
_WINDOW, _FULL_LAYERS, _TOKENS_PER_SECOND = 112, (7, 15, 23, 31), 4


def model_fields(hf: dict) -> dict:
    vision, llm = hf["vision_config"], qwen2_vl.llm_fields(hf)
    qwen2_vl.require_merger_output(vision.get("out_hidden_size", llm["hidden_size"]), llm, "out_hidden_size")
    if vision.get("hidden_act", "silu") != "silu":
        raise MappingError(f"vision_config.hidden_act={vision['hidden_act']!r}: only SwiGLU (silu) MLPs are supported")
    fields = qwen2_vl.tower_fields(vision, vision["hidden_size"])
    window, cell = vision.get("window_size", _WINDOW), fields["patch_size"] * fields["merge_size"]
    if window <= 0 or window % cell:
        raise MappingError(f"vision_config.window_size={window}: must be a positive multiple of "
                           f"patch_size*spatial_merge_size={cell}")
    # Indices past the last layer (the defaults', in a shallower tower) name no layer.
    full = [i for i in vision.get("fullatt_block_indexes", _FULL_LAYERS) if i < fields["num_layers"]]
    return {"llm": llm, "audio": {"enabled": False}, "vision": dict(
        fields, ffn_hidden_size=vision["intermediate_size"], norm="rmsnorm", activation="swiglu", window_size=window,
        full_attention_layers=full, tokens_per_second=vision.get("tokens_per_second", _TOKENS_PER_SECOND))}


def hf_config(model, architecture: str) -> dict:
    vision, llm = model.vision, model.llm
    for field in ("window_size", "tokens_per_second"):
        if not getattr(vision, field):
            raise MappingError(f"model.vision.{field}=0: {architecture} needs one")
    tower = qwen2_vl.tower_config(vision, architecture, dict(norm="rmsnorm", activation="swiglu"))
    return {"architectures": [architecture], "model_type": "qwen2_5_vl", "tie_word_embeddings": llm.tie_embeddings,
            "text_config": qwen2_vl.text_config(llm, architecture, "qwen2_5_vl_text"), "vision_config": dict(
                tower, model_type="qwen2_5_vl_vision", hidden_size=vision.hidden_size,
                intermediate_size=vision.ffn_hidden_size, out_hidden_size=llm.hidden_size, hidden_act="silu",
                window_size=vision.window_size, fullatt_block_indexes=list(vision.full_attention_layers),
                tokens_per_second=vision.tokens_per_second)}


def rules(model) -> list:
    table = qwen2_vl.tower_rules(model.vision, ("weight",))
    for kind in ("weight", "bias"):
        table += [GatedMLP(OURS + f"mlp.linear_fc1.{kind}", THEIRS + f"mlp.gate_proj.{kind}",
                           THEIRS + f"mlp.up_proj.{kind}"),
                  Direct(OURS + f"mlp.linear_fc2.{kind}", THEIRS + f"mlp.down_proj.{kind}")]
    return llama_style.llm_rules(model.llm) + table


def hf_inputs(sample, hf_config, cfg) -> dict:
    """Qwen2-VL's inputs and each video's seconds per temporal group, as Qwen2.5-VL's processor
    gives them (``second_per_grid_ts``: ``temporal_patch_size / data.video_fps``)."""
    inputs = qwen2_vl.vision_inputs(sample, hf_config)
    if "video_grid_thw" in inputs:
        seconds = cfg.model.vision.temporal_patch_size / cfg.data.video_fps
        inputs["second_per_grid_ts"] = torch.full((len(inputs["video_grid_thw"]),), seconds)
    return inputs
