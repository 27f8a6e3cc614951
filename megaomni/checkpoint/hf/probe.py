"""The built-in input of ``tools/convert_hf.py verify``: one conversation, a user turn with a
placeholder for each medium the checkpoint's family takes and its model has enabled (a noise
image, a three-frame noise video, a 0.995 s noise clip) and a question, then an answer, made
into a :class:`Sample` by megaomni's data pipeline with the Hugging Face folder's tokenizer and
the checkpoint's processors. The Hugging Face model takes the same sample as its family's
``hf_inputs(sample, hf_config, cfg)`` (same ids, same pixel and feature tensors): a family
module declares the placeholders it takes (``MEDIA``) and that function; a text-only family
needs neither."""

from __future__ import annotations

import copy
import io
import json
import os
import wave
from dataclasses import dataclass

import numpy as np
import torch

from megaomni.checkpoint.hf.families import FAMILIES
from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.collate import collate_packed
from megaomni.data.sample import Sample, build_sample
from megaomni.data.shards import RawSample
from megaomni.errors import BadSample
from megaomni.media import registry
from megaomni.media.audio import AUDIO
from megaomni.media.vision import IMAGE, VIDEO

QUESTION, ANSWER = "What is shown and heard?", "Grey noise, moving; a hiss."
# (width, height). An odd count of frames fills the last temporal group. Frames of 112 pixels
# (4 merged patches a side for Qwen2-VL's 28) make a video wider than it is long in temporal
# positions (Qwen2.5-VL: 0 and 2 at 2 tokens per second, 2 fps), where transformers 5's rule for
# the text after it (max(h, w) past its start) and Qwen's (one past its largest position) agree.
IMAGE_SIZE, FRAME_SIZE, FRAMES = (90, 61), (112, 112), 3
CLIP_RATE, CLIP_SAMPLES = 16000, 15920  # 100 frames of 10 ms: an even count (see :func:`_clip`)


def tokenizer_of(folder: str):
    """(the HFTokenizer of Hugging Face folder ``folder``, None) or (None, why there is none)."""
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None, "HF_DIR has no tokenizer"
    from megaomni.data.hf_tokenizer import HFTokenizer

    try:
        return HFTokenizer(folder), None
    except ValueError as e:
        return None, str(e)


def _png(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _clip() -> bytes:
    """A 16-bit mono WAV of noise. 15920 samples make 100 log-mel frames both ways (megaomni's
    centred STFT: 1 + 15920 // 160; Whisper's mask: ceil(15920 / 160)); an even count, where the
    stem's last row reads no frame past the clip, so that a clip cut at its end (megaomni's
    features) and one in a zero-padded window (Hugging Face's input) give the same rows."""
    noise = np.random.default_rng(3).normal(0, 3000, CLIP_SAMPLES).clip(-32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(CLIP_RATE)
        f.writeframes(noise.tobytes())
    return out.getvalue()


def _media(placeholder: str) -> list[tuple[str, bytes]]:
    """The members of a placeholder: an image, a video's frames, a clip."""
    return {IMAGE: lambda: [("png", _png(*IMAGE_SIZE, seed=0))],
            VIDEO: lambda: [("png", _png(*FRAME_SIZE, seed=1 + i)) for i in range(FRAMES)],
            AUDIO: lambda: [("wav", _clip())]}[placeholder]()


def probe_config(cfg: OmniConfig) -> OmniConfig:
    """``cfg`` (a checkpoint's) with the data limits the probe must pass (frames kept whole); its
    processors as they are."""
    cfg = copy.deepcopy(cfg)
    data = cfg.data
    data.max_pixels = max(data.max_pixels, FRAME_SIZE[0] * FRAME_SIZE[1])
    data.seq_length, data.truncate, data.zero_media, data.max_video_frames = 1 << 30, False, False, 0
    data.max_audio_seconds = max(data.max_audio_seconds, 1.0)
    data.decoder = "pillow"
    return cfg


@dataclass
class Probe:
    """The probe of one checkpoint."""

    sample: Sample
    batch: Batch  # the sample alone in one packed row
    cfg: OmniConfig  # the configuration it was made with (probe_config's)
    placeholders: tuple[str, ...]  # those it holds, in text order
    left_out: tuple[str, ...]  # "<video> (why)" for the family's placeholders it does not hold

    def describe(self) -> str:
        """What it holds: ``1 image (4x6 patches), 1 video (3 frames: 2x8x8 patches), 1 clip (100
        frames), 71 tokens``; a video's items follow the image's (placeholders in ``MEDIA`` order)."""
        parts, vision = [], iter(self.sample.media.get("vision", []))
        for placeholder in self.placeholders:
            if placeholder == IMAGE:
                item = next(vision)
                parts.append(f"1 image ({item.size[0]}x{item.size[1]} patches)")
            elif placeholder == VIDEO:
                groups = list(vision)
                parts.append(f"1 video ({FRAMES} frames: {len(groups)}x{groups[0].size[0]}x{groups[0].size[1]} "
                             "patches)")
            elif placeholder == AUDIO:
                (clip,) = self.sample.media["audio"]
                parts.append(f"1 clip ({clip.info.get('valid_frames', clip.rows)} frames)")
        parts.append(f"{self.sample.tokens.numel()} tokens")
        return ", ".join(parts) + "".join(f"; no {why}" for why in self.left_out)


def family_media(architecture: str) -> tuple[str, ...]:
    """The placeholders the family of ``architecture`` takes (none for a text-only or unknown one)."""
    return tuple(getattr(FAMILIES.get(architecture), "MEDIA", ()))


def build_probe(tokenizer, cfg: OmniConfig, architecture: str) -> Probe:
    """The probe of a checkpoint of ``cfg`` imported from ``architecture``, tokenized by ``tokenizer``."""
    cfg = probe_config(cfg)
    held, left_out = [], []
    modality_of = {source.placeholder: modality for modality, source in registry.sources()}
    for placeholder in family_media(architecture):
        if not modality_of[placeholder].enabled(cfg.model):
            left_out.append(f"{placeholder} (model.{modality_of[placeholder].name}.enabled=false)")
            continue
        try:
            tokenizer.expansion(placeholder)
        except BadSample:
            left_out.append(f"{placeholder} (the tokenizer has no tokens for it)")
            continue
        held.append(placeholder)
    text = "".join(f"{p}\n" for p in held) + QUESTION
    turns = [{"role": "user", "content": text}, {"role": "assistant", "content": ANSWER}]
    raw = RawSample(key="probe", shard="verify", conversation=json.dumps(turns).encode(),
                    members={p: _media(p) for p in held})
    sample = build_sample(raw, tokenizer, cfg)
    batch = collate_packed([sample], tokenizer.pad_id, sample.tokens.numel())
    return Probe(sample, batch, cfg, tuple(held), tuple(left_out))


def hf_inputs(architecture: str, probe: Probe, hf_config) -> dict:
    """The Hugging Face model's keyword inputs of ``probe``: its family's ``hf_inputs``; the ids
    alone for a family without one."""
    function = getattr(FAMILIES.get(architecture), "hf_inputs", None)
    if function is None:
        return {"input_ids": probe.sample.tokens[None]}
    return function(probe.sample, hf_config, probe.cfg)


def logits(model, probe: Probe) -> torch.Tensor:
    """megaomni's logits ``[1, s, vocab]`` (fp32, on the host) of ``probe``: the whole model's
    forward (``model``: a chunk holding every stage, encoders included)."""
    device = next(model.parameters()).device
    batch = probe.batch.to(device)
    with torch.no_grad():
        out = model(batch.tokens, batch.position_ids, cu_seqlens=batch.cu_seqlens, media=batch.media)
    return out.float().cpu()


def losses(model, hf, architecture: str, probe: Probe) -> tuple[float, float]:
    """The first training step's loss on ``probe`` both ways: megaomni's per-token loss over the
    answer (the training step's), and the Hugging Face model's with the answer tokens as labels
    (it shifts them itself)."""
    device = next(model.parameters()).device
    batch = probe.batch.to(device)
    with torch.no_grad():
        per_token = model(batch.tokens, batch.position_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens,
                          media=batch.media).float()
        ours = (per_token * batch.loss_mask).sum() / batch.loss_mask.sum()
        tokens = probe.sample.tokens[None]
        labels = torch.full_like(tokens, -100)
        trained = probe.sample.loss_mask.bool()[:-1]
        labels[0, 1:][trained] = tokens[0, 1:][trained]
        theirs = hf(**hf_inputs(architecture, probe, hf.config), labels=labels).loss
    return ours.item(), theirs.item()
