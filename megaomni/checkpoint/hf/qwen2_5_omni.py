"""Qwen2.5-Omni's thinker: Qwen2.5-VL's vision tower (megaomni.checkpoint.hf.qwen2_5_vl) with the
attention's query, key and value as three projections, Qwen2-Audio's Whisper encoder
(megaomni.checkpoint.hf.qwen2_audio) run in chunks of ``2 * n_window`` frames, and a Qwen2 LLM
with multimodal RoPE, in one checkpoint. A video's temporal positions are spaced by time
(``position_id_per_seconds``), and a video may carry its audio track, interleaved with it in
chunks of ``seconds_per_chunk`` seconds (megaomni/data/audio_in_video.py).

In megaomni: both encoders with those options as configuration (model.vision.tokens_per_second,
seconds_first, seconds_per_chunk; model.audio.chunk_frames, bos_eos_embedding). Two tensors are
not the checkpoint's alone: the audio tower's sinusoidal position table is computed, never saved
(megaomni's buffer is made on import), and its ``audio_bos_eos_token`` table, which its forward
never reads, is carried through (model.audio.bos_eos_embedding) so that the export is exact.

The family's processing comes with it, its two parts': Qwen2-VL's image sizing and normalisation
(its vision processor's) and Whisper's features (its feature extractor is a WhisperFeatureExtractor:
``qwen2_audio.audio_fields``)."""

from __future__ import annotations

from functools import partial

import torch

from megaomni.checkpoint.hf import qwen2_5_vl, qwen2_audio, qwen2_vl
from megaomni.checkpoint.hf.mapping import QKV, Computed, Direct, MappingError, StackedQKV
from megaomni.layers.rotary import whisper_sinusoids
from megaomni.media.audio import AUDIO
from megaomni.media.vision import IMAGE, VIDEO

ARCHITECTURES = {"Qwen2_5OmniThinkerForConditionalGeneration": "qwen2_5_omni_thinker"}
MEDIA = (IMAGE, VIDEO, AUDIO)  # the placeholders the family takes (tools/convert_hf.py verify's probe)

# Qwen2_5OmniThinkerConfig's and its audio encoder's defaults, where a config.json leaves them out.
_PER_SECOND, _SECONDS_PER_CHUNK, _N_WINDOW = 25, 2, 100


def model_fields(hf: dict) -> dict:
    vision = dict(hf["vision_config"], tokens_per_second=hf.get("position_id_per_seconds", _PER_SECOND))
    sections = qwen2_5_vl.model_fields(dict(hf, vision_config=vision))
    sections["vision"].update(seconds_first=True, seconds_per_chunk=hf.get("seconds_per_chunk", _SECONDS_PER_CHUNK))
    audio, width = hf["audio_config"], sections["llm"]["hidden_size"]
    if audio.get("output_dim", width) != width:
        raise MappingError(f"audio_config.output_dim={audio['output_dim']}: the audio tower must map into the LLM's "
                           f"hidden size {width}")
    sections["audio"] = dict(qwen2_audio.audio_fields(audio), chunk_frames=2 * audio.get("n_window", _N_WINDOW),
                             bos_eos_embedding=True)
    return sections


def _require(model, architecture: str) -> None:
    """The fields the thinker fixes (not the Qwen2.5-VL tower's or the Whisper encoder's)."""
    vision, audio = model.vision, model.audio
    for section, field in (("vision", "seconds_first"), ("audio", "bos_eos_embedding")):
        if not getattr(getattr(model, section), field):
            raise MappingError(f"model.{section}.{field}=false: {architecture}'s is true")
    if not vision.seconds_per_chunk:
        raise MappingError(f"model.vision.seconds_per_chunk=0: {architecture} needs one")
    if audio.chunk_frames <= 0 or audio.chunk_frames % 2:
        raise MappingError(f"model.audio.chunk_frames={audio.chunk_frames}: {architecture}'s chunks are a positive "
                           "even number of frames (2 * n_window)")


def hf_config(model, architecture: str) -> dict:
    _require(model, architecture)
    config = qwen2_5_vl.hf_config(model, architecture)
    vision = dict(config["vision_config"], model_type="qwen2_5_omni_vision_encoder")
    audio = dict(qwen2_audio.audio_config(model.audio, architecture), model_type="qwen2_5_omni_audio_encoder",
                 n_window=model.audio.chunk_frames // 2, output_dim=model.llm.hidden_size)
    return dict(config, model_type="qwen2_5_omni_thinker", position_id_per_seconds=vision.pop("tokens_per_second"),
                seconds_per_chunk=model.vision.seconds_per_chunk, vision_config=vision, audio_config=audio,
                text_config=dict(config["text_config"], model_type="qwen2_5_omni_text"))


def _separate(rule):
    """Qwen2.5-VL's stacked ``attn.qkv`` as this tower's ``attn.q``, ``attn.k``, ``attn.v``."""
    if not isinstance(rule, StackedQKV):
        return rule
    return QKV(rule.ours, *(rule.theirs.replace(".qkv.", f".{part}.") for part in "qkv"), rule.heads)


def rules(model) -> list:
    _require(model, "Qwen2.5-Omni")
    audio = model.audio
    table = [_separate(rule) for rule in qwen2_5_vl.rules(model)]
    table += qwen2_audio.tower_rules(audio, "audio_tower.ln_post", "audio_tower.proj")
    sinusoids = partial(whisper_sinusoids, audio.max_positions, audio.hidden_size)
    return table + [Computed("audio_encoder.position_embedding", sinusoids),
                    Direct("audio_encoder.bos_eos_embedding", "audio_tower.audio_bos_eos_token.weight")]


def hf_inputs(sample, hf_config, cfg) -> dict:
    """The thinker's keyword inputs of ``sample`` (made under ``cfg``): Qwen2-VL's ids and vision
    inputs (the thinker takes no mm token types), each video's seconds per temporal group
    (``temporal_patch_size / data.video_fps``), Qwen2-Audio's clips in windows of the longest
    clip's rows (the tower drops a window's padding by ``feature_attention_mask``), an attention
    mask (without one the thinker leaves its multimodal RoPE positions out) and no audio track in
    a video (megaomni's ``<video><audio>`` pairs are the interleaved tests', not the probe's)."""
    inputs = qwen2_vl.vision_inputs(sample, hf_config)
    inputs.pop("mm_token_type_ids")
    if "video_grid_thw" in inputs:
        seconds = cfg.model.vision.temporal_patch_size / cfg.data.video_fps
        inputs["video_second_per_grid"] = torch.full((len(inputs["video_grid_thw"]),), seconds)
    window = max((clip.rows for clip in sample.media.get("audio", [])), default=0)
    return dict(inputs, **qwen2_audio.audio_inputs(sample, window), attention_mask=torch.ones_like(inputs["input_ids"]),
                use_audio_in_video=False)
