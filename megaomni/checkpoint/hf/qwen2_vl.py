"""Qwen2-VL: a ViT with 2D rotary over each image's patch grid (LayerNorm, biases, QuickGELU MLP,
Conv3d patches of 2 frames), a merger (LayerNorm of each patch, 2x2 patches concatenated, GELU
MLP) into a Qwen2 LLM whose RoPE is multimodal (temporal, height, width sections).

In megaomni: the vision encoder with those options as configuration; the merger's LayerNorm is
the encoder blocks' final norm (it normalises every patch before merging), its MLP the projector.
Reads both ``config.json`` layouts: transformers 4's (the LLM's fields at the top) and 5's
(``text_config``).

The family's image processing comes with it: Qwen2-VL's ``smart_resize`` and OpenAI CLIP's mean
and std (its processor's defaults; the pixel budget is ``data.min_pixels`` / ``data.max_pixels``)."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf import llama_style
from megaomni.checkpoint.hf.mapping import Direct, Heads, MappingError, Reshaped, StackedQKV
from megaomni.media.images import CLIP_MEAN, CLIP_STD
from megaomni.media.vision import IMAGE, VIDEO

ARCHITECTURES = {"Qwen2VLForConditionalGeneration": "qwen2_vl"}
MEDIA = (IMAGE, VIDEO)  # the placeholders the family takes (tools/convert_hf.py verify's probe)

# A vision layer's names, ours and theirs (the towers of the Qwen2-VL family share them).
OURS, THEIRS = "vision_encoder.blocks.layers.{v}.", "visual.blocks.{v}."


def _text(hf: dict) -> dict:
    return hf.get("text_config") or {k: v for k, v in hf.items() if k != "vision_config"}


def _mrope_section(text: dict) -> list[int]:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if "mrope_section" not in rope:
        raise MappingError("config.json: no mrope_section in rope_parameters / rope_scaling (Qwen2-VL's LLM has one)")
    return list(rope["mrope_section"])


def llm_fields(hf: dict) -> dict:
    """``model.llm`` fields of a Qwen2-VL-style ``config.json``: a Qwen2 LLM with multimodal RoPE."""
    text = _text(hf)
    llm = llama_style.llm_fields(text, "qwen2")
    llm.update(mrope_section=_mrope_section(text),
               tie_embeddings=bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))))
    return llm


def require_merger_output(out: int, llm: dict, field: str) -> None:
    if out != llm["hidden_size"]:
        raise MappingError(f"vision_config.{field}={out}: the merger must map into the LLM's hidden size "
                           f"{llm['hidden_size']}")


def tower_fields(vision: dict, width: int) -> dict:
    """``model.vision`` fields the Qwen2-VL-style towers share, of their ``vision_config``
    ``vision`` and width ``width``; not the blocks' norm, activation and MLP width."""
    merge = vision.get("spatial_merge_size", 2)
    return dict(enabled=True, num_layers=vision["depth"], hidden_size=width, num_attention_heads=vision["num_heads"],
                patch_size=vision.get("patch_size", 14), merge_size=merge,
                in_channels=vision.get("in_channels", vision.get("in_chans", 3)),
                temporal_patch_size=vision.get("temporal_patch_size", 2),
                rotary_base=float((vision.get("rope_parameters") or {}).get("rope_theta", 10000.0)), norm_eps=1e-6,
                bias=True, projector_hidden_size=width * merge * merge, temporal_embedding=False,
                resize="smart_resize", image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def model_fields(hf: dict) -> dict:
    vision, llm = hf["vision_config"], llm_fields(hf)
    width = vision["embed_dim"]
    require_merger_output(vision.get("hidden_size", llm["hidden_size"]), llm, "hidden_size")
    return {"llm": llm, "audio": {"enabled": False}, "vision": dict(
        tower_fields(vision, width), ffn_hidden_size=int(width * vision.get("mlp_ratio", 4)), norm="layernorm",
        activation=vision.get("hidden_act", "quick_gelu"))}


def text_config(llm, architecture: str, model_type: str) -> dict:
    """The ``text_config`` of ``model.llm`` ``llm``: Qwen2 with multimodal RoPE."""
    text = llama_style.llm_config(llm, architecture, "qwen2")
    text.pop("rope_theta")
    text.update(model_type=model_type, rope_parameters=dict(rope_type="default", rope_theta=float(llm.rotary_base),
                                                            mrope_section=list(llm.mrope_section)))
    return text


def tower_config(vision, architecture: str, fixed: dict) -> dict:
    """The ``vision_config`` fields the Qwen2-VL-style towers share, of ``model.vision``
    ``vision``, whose fields ``fixed`` (name: value) must be ``architecture``'s."""
    fixed = dict(bias=True, temporal_embedding=False, projector_hidden_size=vision.hidden_size * vision.merge_size**2,
                 **fixed)
    for field, value in fixed.items():
        if getattr(vision, field) != value:
            raise MappingError(f"model.vision.{field}={getattr(vision, field)}: {architecture}'s is {value}")
    return dict(depth=vision.num_layers, num_heads=vision.num_attention_heads, patch_size=vision.patch_size,
                spatial_merge_size=vision.merge_size, temporal_patch_size=vision.temporal_patch_size,
                in_channels=vision.in_channels, rope_parameters=dict(rope_type="axial", rope_theta=vision.rotary_base))


def hf_config(model, architecture: str) -> dict:
    vision, llm = model.vision, model.llm
    if vision.ffn_hidden_size % vision.hidden_size:
        raise MappingError(f"model.vision.ffn_hidden_size={vision.ffn_hidden_size}: Qwen2-VL's MLP is a whole "
                           f"multiple (mlp_ratio) of hidden_size={vision.hidden_size}")
    tower = tower_config(vision, architecture, dict(norm="layernorm", window_size=0, full_attention_layers=[],
                                                    tokens_per_second=0))
    return {"architectures": [architecture], "model_type": "qwen2_vl", "tie_word_embeddings": llm.tie_embeddings,
            "text_config": text_config(llm, architecture, "qwen2_vl_text"), "vision_config": dict(
                tower, model_type="qwen2_vl_vision", embed_dim=vision.hidden_size, hidden_size=llm.hidden_size,
                mlp_ratio=vision.ffn_hidden_size // vision.hidden_size, hidden_act=vision.activation)}


def tower_rules(vision, norms: tuple[str, ...]) -> list:
    """The rules the Qwen2-VL-style vision towers share over ``{v}``: the patch embedding, the
    stacked attention, the norms (``norms``: their tensors, ``("weight", "bias")`` for LayerNorm)
    and the merger; not the MLP."""
    count = vision.num_attention_heads
    heads = Heads(count, count, vision.hidden_size // count)
    shape = (vision.hidden_size, vision.in_channels, vision.temporal_patch_size, vision.patch_size, vision.patch_size)
    table = [Reshaped("vision_encoder.patch_embed.weight", "visual.patch_embed.proj.weight", shape)]
    for kind in norms:
        table += [Direct(OURS + f"input_layernorm.{kind}", THEIRS + f"norm1.{kind}"),
                  Direct(OURS + f"pre_mlp_layernorm.{kind}", THEIRS + f"norm2.{kind}"),
                  Direct(f"vision_encoder.blocks.final_layernorm.{kind}", f"visual.merger.ln_q.{kind}")]
    for kind in ("weight", "bias"):
        table += [
            StackedQKV(OURS + f"self_attention.linear_qkv.{kind}", THEIRS + f"attn.qkv.{kind}", heads),
            Direct(OURS + f"self_attention.linear_proj.{kind}", THEIRS + f"attn.proj.{kind}"),
            Direct(f"vision_encoder.projector.fc1.{kind}", f"visual.merger.mlp.0.{kind}"),
            Direct(f"vision_encoder.projector.fc2.{kind}", f"visual.merger.mlp.2.{kind}"),
        ]
    return table


def rules(model) -> list:
    table = tower_rules(model.vision, ("weight", "bias"))
    for kind in ("weight", "bias"):
        table += [Direct(OURS + f"mlp.linear_fc1.{kind}", THEIRS + f"mlp.fc1.{kind}"),
                  Direct(OURS + f"mlp.linear_fc2.{kind}", THEIRS + f"mlp.fc2.{kind}")]
    return llama_style.llm_rules(model.llm) + table


def vision_inputs(sample, hf_config) -> dict:
    """The Hugging Face model's ids and vision inputs of a megaomni ``sample`` (one row): its
    mm token types (1 image, 2 video), each image's patches and ``[1, h, w]`` grid, each
    video's (its items: its temporal groups, from time 0) and ``[T, h, w]`` grid. An item is
    an image's or a video's by the pads it fills (``image_token_id``, ``video_token_id``)."""
    ids, image, video = sample.tokens[None], hf_config.image_token_id, hf_config.video_token_id
    pads = ids[0][(ids[0] == image) | (ids[0] == video)].tolist()
    images, videos, at = [], [], 0
    for item in sample.media.get("vision", []):
        if pads[at] == image:
            images.append([item])
        elif item.info["time"] == 0 or not videos:
            videos.append([item])
        else:
            videos[-1].append(item)
        at += item.tokens
    inputs = {"input_ids": ids, "mm_token_type_ids": ((ids == image).int() + 2 * (ids == video).int())}
    for kind, media in (("image", images), ("video", videos)):
        if media:
            key = "pixel_values" if kind == "image" else "pixel_values_videos"
            inputs[key] = torch.cat([item.values for items in media for item in items])
            inputs[f"{kind}_grid_thw"] = torch.tensor([[len(items), *items[0].size] for items in media])
    return inputs


def hf_inputs(sample, hf_config, cfg) -> dict:
    """The Hugging Face model's keyword inputs of ``sample`` (made under ``cfg``)."""
    return vision_inputs(sample, hf_config)
