"""LLaVA (``LlavaForConditionalGeneration``): a CLIP or SigLIP tower over fixed-size images, the
output of one of its layers (``vision_feature_layer``; -2: the penultimate's), without the
tower's final norm, its class token's row dropped ("default") or kept ("full"), then a
Linear-GELU-Linear projector into a Llama-style LLM (Llama, Qwen2, ...).

In megaomni: the vision encoder with learned positions, a class token and a pre-norm (CLIP) or a
patch bias (SigLIP), and ``feature_layer``; the layers after it and the ``post_layernorm``, which
LLaVA never runs, are kept frozen (``vision_encoder.unused``), so that an export is the whole
checkpoint again. Reads the tensor names transformers 5 writes (``vision_tower.*``) and those of
transformers 4 (``vision_tower.vision_model.*``); writes the former."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf import llama_style
from megaomni.checkpoint.hf.mapping import QKV, Direct, Heads, MappingError, Reshaped, prefixed
from megaomni.config import VisionConfig
from megaomni.media.images import CLIP_MEAN, CLIP_STD
from megaomni.media.vision import IMAGE

ARCHITECTURES = {"LlavaForConditionalGeneration": "llava"}
MEDIA = (IMAGE,)  # the placeholders the family takes (tools/convert_hf.py verify's probe)

# config.json leaves out what equals the config class's default: transformers' defaults.
_TOWER_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, num_channels=3)
_TOWERS = {  # model_type -> (its defaults, megaomni's (class_token, pre_norm, patch_bias))
    "clip_vision_model": (dict(patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5), (True, True, False)),
    "siglip_vision_model": (dict(patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                                 vision_use_head=True), (False, False, True)),
}
# How each tower's Hugging Face processor sizes and normalises images (image_size a side; a folder's
# preprocessor_config.json overrides the mean / std, megaomni.checkpoint.hf.convert).
_RESIZES = {"clip_vision_model": "shortest_edge_crop", "siglip_vision_model": "square"}
_NORMALISATION = {"clip_vision_model": (CLIP_MEAN, CLIP_STD), "siglip_vision_model": ([0.5], [0.5])}
_TEXT_DEFAULTS = {
    "llama": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-6),
    "qwen2": dict(hidden_size=4096, intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
                  vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6),
}
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}  # theirs -> ours
_OLD_TOWER, _TOWER = "vision_tower.vision_model.", "vision_tower."
_LLM = "language_model."  # before llama_style's names (model.layers..., lm_head.weight)


def checkpoint_names(tensors: dict) -> dict:
    """``tensors`` under the names transformers 5 writes (transformers 4's tower is a level deeper)."""
    return {(_TOWER + k[len(_OLD_TOWER):] if k.startswith(_OLD_TOWER) else k): v for k, v in tensors.items()}


def _text(hf: dict) -> tuple[dict, str]:
    text = hf.get("text_config") or {}
    kind = text.get("model_type", "llama")
    if kind not in llama_style.ARCHITECTURES.values():
        raise MappingError(f"text_config.model_type={kind!r}: supported LLMs: "
                           f"{', '.join(llama_style.ARCHITECTURES.values())}")
    return {**_TEXT_DEFAULTS.get(kind, {}), **text}, kind


def _tower(hf: dict) -> tuple[dict, str]:
    vision = hf.get("vision_config") or {}
    tower = vision.get("model_type", "clip_vision_model")
    if tower not in _TOWERS:
        raise MappingError(f"vision_config.model_type={tower!r}: supported towers: {', '.join(_TOWERS)}")
    vision = {**_TOWER_DEFAULTS, **_TOWERS[tower][0], **vision}
    if vision.get("vision_use_head"):
        raise MappingError("vision_config.vision_use_head=true: SigLIP's pooling head, which LLaVA does not run, "
                           "is not kept (LLaVA checkpoints have none)")
    if vision["hidden_act"] not in _ACTIVATIONS:
        raise MappingError(f"vision_config.hidden_act={vision['hidden_act']!r}: supported: {', '.join(_ACTIVATIONS)}")
    return vision, tower


def model_fields(hf: dict) -> dict:
    (text, kind), (vision, tower) = _text(hf), _tower(hf)
    llm = llama_style.llm_fields(text, kind)
    llm["tie_embeddings"] = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    layer, strategy = hf.get("vision_feature_layer", -2), hf.get("vision_feature_select_strategy", "default")
    layers = vision["num_hidden_layers"]
    used = VisionConfig(num_layers=layers, feature_layer=layer).layers_used() if isinstance(layer, int) else 0
    if not 1 <= used <= layers:
        raise MappingError(f"vision_feature_layer={layer}: one layer's output of the tower's {layers} is supported")
    class_token, pre_norm, patch_bias = _TOWERS[tower][1]
    if strategy != "full" and not class_token:
        raise MappingError(f"vision_feature_select_strategy={strategy!r}: drops a {tower}'s first patch (it has no "
                           "class token); only 'full' is supported")
    if hf.get("projector_hidden_act", "gelu") != "gelu" or not hf.get("multimodal_projector_bias", True):
        raise MappingError(f"projector_hidden_act={hf.get('projector_hidden_act')!r}, multimodal_projector_bias="
                           f"{hf.get('multimodal_projector_bias')}: the projector is Linear-GELU-Linear with biases")
    return {"llm": llm, "audio": {"enabled": False}, "vision": dict(
        enabled=True, num_layers=layers, hidden_size=vision["hidden_size"],
        num_attention_heads=vision["num_attention_heads"], ffn_hidden_size=vision["intermediate_size"],
        patch_size=vision["patch_size"], merge_size=1, in_channels=vision["num_channels"],
        norm_eps=float(vision["layer_norm_eps"]), norm="layernorm", activation=_ACTIVATIONS[vision["hidden_act"]],
        bias=True, projector_hidden_size=0, temporal_embedding=False, position_embedding="learned",
        image_size=vision["image_size"], resize=_RESIZES[tower], image_mean=list(_NORMALISATION[tower][0]),
        image_std=list(_NORMALISATION[tower][1]), class_token=class_token,
        keep_class_token=class_token and strategy == "full", pre_norm=pre_norm, patch_bias=patch_bias,
        feature_layer=layer)}


def _tower_of(model) -> str:
    """The tower ``model.vision`` is, as LLaVA writes it; MappingError where it is none."""
    vision, llm = model.vision, model.llm
    towers = {options: name for name, (_, options) in _TOWERS.items()}
    options = (vision.class_token, vision.pre_norm, vision.patch_bias)
    fits = {"position_embedding=learned": vision.position_embedding == "learned",
            "norm=layernorm": vision.norm == "layernorm", "bias=true": vision.bias,
            "merge_size=1": vision.merge_size == 1,
            "temporal_patch_size=1": vision.temporal_patch_size == 1,
            "feature_layer other than 0 (LLaVA reads a layer without the final norm)": vision.feature_layer != 0,
            f"activation one of {', '.join(_ACTIVATIONS.values())}": vision.activation in _ACTIVATIONS.values(),
            "class_token, pre_norm, patch_bias as CLIP's (true, true, false) or SigLIP's (false, false, true)":
                options in towers,
            "projector_hidden_size 0 (the LLM's)": vision.projector_hidden_size in (0, llm.hidden_size)}
    if wrong := [what for what, ok in fits.items() if not ok]:
        raise MappingError(f"model.vision: LLaVA's tower needs {'; '.join(wrong)}")
    if llm.mrope_section:
        raise MappingError("model.llm.mrope_section: LLaVA's LLM has plain RoPE")
    return towers[options]


def _llm_kind(llm) -> str:
    return "qwen3_moe" if llm.moe.enabled else "qwen3" if llm.qk_norm else "qwen2" if llm.qkv_bias else "llama"


def hf_config(model, architecture: str) -> dict:
    vision, llm, tower = model.vision, model.llm, _tower_of(model)
    text = {"model_type": _llm_kind(llm), **llama_style.llm_config(llm, architecture, _llm_kind(llm))}
    act = {ours: theirs for theirs, ours in _ACTIVATIONS.items()}[vision.activation]
    tower_config = dict(model_type=tower, hidden_size=vision.hidden_size, intermediate_size=vision.ffn_hidden_size,
                        num_hidden_layers=vision.num_layers, num_attention_heads=vision.num_attention_heads,
                        image_size=vision.image_size, patch_size=vision.patch_size, num_channels=vision.in_channels,
                        hidden_act=act, layer_norm_eps=vision.norm_eps,
                        **({"vision_use_head": False} if tower == "siglip_vision_model" else {}))
    kept = not vision.class_token or vision.keep_class_token
    return {"architectures": [architecture], "model_type": "llava", "tie_word_embeddings": llm.tie_embeddings,
            "text_config": text, "vision_config": tower_config, "vision_feature_layer": vision.feature_layer,
            "vision_feature_select_strategy": "full" if kept else "default", "projector_hidden_act": "gelu",
            "multimodal_projector_bias": True,
            "image_seq_length": (vision.image_size // vision.patch_size) ** 2 + int(vision.class_token and kept)}


def _layer(ours: str, theirs: str, heads: Heads) -> list:
    table = []
    for kind in ("weight", "bias"):
        table += [
            Direct(ours + f"input_layernorm.{kind}", theirs + f"layer_norm1.{kind}"),
            QKV(ours + f"self_attention.linear_qkv.{kind}", theirs + f"self_attn.q_proj.{kind}",
                theirs + f"self_attn.k_proj.{kind}", theirs + f"self_attn.v_proj.{kind}", heads),
            Direct(ours + f"self_attention.linear_proj.{kind}", theirs + f"self_attn.out_proj.{kind}"),
            Direct(ours + f"pre_mlp_layernorm.{kind}", theirs + f"layer_norm2.{kind}"),
            Direct(ours + f"mlp.linear_fc1.{kind}", theirs + f"mlp.fc1.{kind}"),
            Direct(ours + f"mlp.linear_fc2.{kind}", theirs + f"mlp.fc2.{kind}"),
        ]
    return table


def rules(model) -> list:
    vision, tower = model.vision, _tower_of(model)
    heads = Heads(vision.num_attention_heads, vision.num_attention_heads,
                  vision.hidden_size // vision.num_attention_heads)
    used, embeddings = vision.layers_used(), _TOWER + "embeddings."
    shape = (vision.hidden_size, vision.in_channels, vision.patch_size, vision.patch_size)
    table = [Reshaped("vision_encoder.patch_embed.weight", embeddings + "patch_embedding.weight", shape),
             Direct("vision_encoder.position_embedding.weight", embeddings + "position_embedding.weight")]
    if tower == "clip_vision_model":
        table += [Direct("vision_encoder.class_embedding", embeddings + "class_embedding"),
                  *(Direct(f"vision_encoder.pre_norm.{k}", _TOWER + f"pre_layrnorm.{k}") for k in ("weight", "bias"))]
    else:
        table.append(Direct("vision_encoder.patch_embed.bias", embeddings + "patch_embedding.bias"))
    for v in range(vision.num_layers):  # the layers run, then those kept unrun
        ours = f"vision_encoder.blocks.layers.{v}." if v < used else f"vision_encoder.unused.layers.{v - used}."
        table += _layer(ours, _TOWER + f"encoder.layers.{v}.", heads)
    for kind in ("weight", "bias"):
        table += [Direct(f"vision_encoder.unused.final_layernorm.{kind}", _TOWER + f"post_layernorm.{kind}"),
                  Direct(f"vision_encoder.projector.fc1.{kind}", f"multi_modal_projector.linear_1.{kind}"),
                  Direct(f"vision_encoder.projector.fc2.{kind}", f"multi_modal_projector.linear_2.{kind}")]
    return [prefixed(rule, _LLM) for rule in llama_style.llm_rules(model.llm)] + table


def hf_inputs(sample, hf_config, cfg) -> dict:
    """The ids and ``pixel_values`` ``[images, C, H, W]`` of ``sample``: each image's patches
    (raster order, each (C, p, p) flattened) put back in place."""
    inputs, images = {"input_ids": sample.tokens[None]}, sample.media.get("vision", [])
    if images:
        channels, patch = hf_config.vision_config.num_channels, hf_config.vision_config.patch_size
        inputs["pixel_values"] = torch.stack([
            item.values.reshape(*item.size, channels, patch, patch).permute(2, 0, 3, 1, 4)
            .reshape(channels, item.size[0] * patch, item.size[1] * patch) for item in images])
    return inputs
