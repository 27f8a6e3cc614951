"""Qwen2-Audio: a Whisper encoder (convolutional stem striding by 2, Whisper's fixed sinusoidal
position table, pre-LN layers with LayerNorm, biases except on the key, GELU MLP), then a 2-row
average pool, a LayerNorm and one Linear into a Qwen2 LLM (plain RoPE).

In megaomni: the audio encoder with those options as configuration (position_embedding
sinusoidal, projector pool_linear: the LayerNorm after pooling is the projector's).

The family's audio processing comes with it: Whisper's features (``model.audio.features=whisper``;
its processor's feature extractor is a WhisperFeatureExtractor)."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf import llama_style
from megaomni.checkpoint.hf.mapping import QKV, Direct, Heads, MappingError, prefixed
from megaomni.media.audio import AUDIO

ARCHITECTURES = {"Qwen2AudioForConditionalGeneration": "qwen2_audio"}
MEDIA = (AUDIO,)  # the placeholders the family takes (tools/convert_hf.py verify's probe)

# model.audio fields Qwen2-Audio fixes (nn.LayerNorm's eps; conv2's stride, AvgPool1d(2) after it).
_FIXED = dict(norm="layernorm", norm_eps=1e-5, bias=True, stem_stride=2, downsample=4,
              position_embedding="sinusoidal", projector="pool_linear")
_ACTIVATIONS = ("gelu", "quick_gelu")  # Hugging Face's names that are megaomni's too
_LLM = "language_model."  # the checkpoint's prefix of the LLM's names
_OURS, _THEIRS = "audio_encoder.blocks.layers.{a}.", "audio_tower.layers.{a}."


def audio_fields(audio: dict) -> dict:
    """``model.audio`` fields of a Whisper-style ``audio_config`` ``audio``, with the family's
    features (its processor's: a WhisperFeatureExtractor). ``features`` is processing, not
    architecture: export (:func:`audio_config`) takes a model of either."""
    activation = audio.get("activation_function", "gelu")
    if activation not in _ACTIVATIONS:
        raise MappingError(f"audio_config.activation_function={activation!r}: supported: {', '.join(_ACTIVATIONS)}")
    if audio.get("scale_embedding"):
        raise MappingError("audio_config.scale_embedding=true: Qwen2-Audio's stem output is not scaled")
    return dict(enabled=True, num_layers=audio["encoder_layers"], hidden_size=audio["d_model"],
                num_attention_heads=audio["encoder_attention_heads"], ffn_hidden_size=audio["encoder_ffn_dim"],
                n_mels=audio.get("num_mel_bins", 128), max_positions=audio.get("max_source_positions", 1500),
                activation=activation, features="whisper", **_FIXED)


def model_fields(hf: dict) -> dict:
    text = hf["text_config"]
    llm = llama_style.llm_fields(text, "qwen2")
    llm.update(tie_embeddings=bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))))
    return {"llm": llm, "vision": {"enabled": False}, "audio": audio_fields(hf["audio_config"])}


def audio_config(audio, architecture: str) -> dict:
    """The Whisper-style ``audio_config`` fields of ``model.audio`` ``audio`` (no ``model_type``)."""
    for field, value in _FIXED.items():
        if getattr(audio, field) != value:
            raise MappingError(f"model.audio.{field}={getattr(audio, field)}: {architecture}'s is {value}")
    if audio.activation not in _ACTIVATIONS:
        raise MappingError(f"model.audio.activation={audio.activation}: {architecture}'s is one of "
                           f"{', '.join(_ACTIVATIONS)}")
    return dict(encoder_layers=audio.num_layers, d_model=audio.hidden_size,
                encoder_attention_heads=audio.num_attention_heads, encoder_ffn_dim=audio.ffn_hidden_size,
                num_mel_bins=audio.n_mels, max_source_positions=audio.max_positions,
                activation_function=audio.activation, scale_embedding=False)


def hf_config(model, architecture: str) -> dict:
    llm, audio = model.llm, audio_config(model.audio, architecture)
    text = llama_style.llm_config(llm, architecture, "qwen2")
    return {"architectures": [architecture], "model_type": "qwen2_audio", "tie_word_embeddings": llm.tie_embeddings,
            "text_config": {"model_type": "qwen2", **text},
            "audio_config": dict(model_type="qwen2_audio_encoder", **audio)}


def tower_rules(audio, norm: str, linear: str) -> list:
    """The Whisper-style encoder's rules over ``{a}`` but its position table; ``norm``, ``linear``:
    the checkpoint's names of the projector's LayerNorm and Linear."""
    heads = Heads(audio.num_attention_heads, audio.num_attention_heads, audio.hidden_size // audio.num_attention_heads)
    attention = _THEIRS + "self_attn."
    table = [
        QKV(_OURS + "self_attention.linear_qkv.weight", attention + "q_proj.weight", attention + "k_proj.weight",
            attention + "v_proj.weight", heads),
        QKV(_OURS + "self_attention.linear_qkv.bias", attention + "q_proj.bias", "", attention + "v_proj.bias", heads),
    ]
    for kind in ("weight", "bias"):
        table += [
            Direct(f"audio_encoder.conv1.{kind}", f"audio_tower.conv1.{kind}"),
            Direct(f"audio_encoder.conv2.{kind}", f"audio_tower.conv2.{kind}"),
            Direct(_OURS + f"input_layernorm.{kind}", _THEIRS + f"self_attn_layer_norm.{kind}"),
            Direct(_OURS + f"self_attention.linear_proj.{kind}", attention + f"out_proj.{kind}"),
            Direct(_OURS + f"pre_mlp_layernorm.{kind}", _THEIRS + f"final_layer_norm.{kind}"),
            Direct(_OURS + f"mlp.linear_fc1.{kind}", _THEIRS + f"fc1.{kind}"),
            Direct(_OURS + f"mlp.linear_fc2.{kind}", _THEIRS + f"fc2.{kind}"),
            Direct(f"audio_encoder.projector.norm.{kind}", f"{norm}.{kind}"),
            Direct(f"audio_encoder.projector.linear.{kind}", f"{linear}.{kind}"),
        ]
    return table


def rules(model) -> list:
    table = [Direct("audio_encoder.position_embedding", "audio_tower.embed_positions.weight"),
             *tower_rules(model.audio, "audio_tower.layer_norm", "multi_modal_projector.linear")]
    return [prefixed(rule, _LLM) for rule in llama_style.llm_rules(model.llm)] + table


def audio_inputs(sample, window: int) -> dict:
    """A megaomni ``sample``'s clips as Hugging Face's Whisper-style inputs: ``input_features``
    ``[clips, mels, window]`` (each clip's rows transposed, in a window zero-padded to
    ``window`` frames where its rows are fewer: megaomni's features of the clip alone) and
    ``feature_attention_mask`` over each clip's own frames."""
    clips = sample.media.get("audio", [])
    if not clips:
        return {}
    features = torch.zeros(len(clips), clips[0].values.shape[1], window)
    mask = torch.zeros(len(clips), window, dtype=torch.long)
    for i, clip in enumerate(clips):
        if clip.rows > window:
            raise MappingError(f"a clip of {clip.rows} feature frames: the Hugging Face model takes windows of "
                               f"{window} (max_source_positions * 2)")
        features[i, :, :clip.rows] = clip.values.T
        mask[i, :clip.info.get("valid_frames", clip.rows)] = 1
    return {"input_features": features, "feature_attention_mask": mask}


def hf_inputs(sample, hf_config, cfg) -> dict:
    """The Hugging Face model's keyword inputs of ``sample`` (made under ``cfg``)."""
    window = 2 * hf_config.audio_config.max_source_positions
    return {"input_ids": sample.tokens[None], **audio_inputs(sample, window)}
