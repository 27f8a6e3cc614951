"""Media as a Hugging Face family's processor makes them: megaomni's decoded values equal the
processor's ``pixel_values`` / ``pixel_values_videos`` / ``input_features`` (max abs 1e-5) and
its grids and lengths, for Qwen2-VL, CLIP, SigLIP and Whisper (Qwen2-Audio). The processors are
built from constructor arguments (nothing is downloaded). The image processors are HF's PIL
classes (``resample=pil``); the torchvision ones (the fast image processors and the only video
processor, ``resample=torch``) are compared where torchvision is installed."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    PreTrainedTokenizerFast,
    Qwen2AudioProcessor,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
    WhisperFeatureExtractor,
)

from megaomni.config import OmniConfig
from megaomni.media import registry
from megaomni.media.images import CLIP_MEAN, CLIP_STD
from tests.data.test_media import wav_bytes

QWEN_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64}
# Each family's model.vision fields (data.min_pixels / max_pixels: QWEN_PIXELS for Qwen2-VL).
FAMILIES = {
    "qwen2_vl": {"resize": "smart_resize", "temporal_patch_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD},
    "clip": {"resize": "shortest_edge_crop", "image_size": 224, "merge_size": 1, "image_mean": CLIP_MEAN,
             "image_std": CLIP_STD},
    "siglip": {"resize": "square", "image_size": 224, "patch_size": 16, "merge_size": 1},
}
# (width, height): odd sizes up and down, a side under half a merge cell (smart_resize's own rule)
SIZES = [(57, 83), (300, 41), (1000, 999), (5, 7), (13, 400), (224, 224)]
TOLERANCE = 1e-5
needs_torchvision = pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                                       reason="torchvision is not installed (HF's torchvision processors need it)")


def family_config(family: str, resample: str = "pil") -> OmniConfig:
    cfg = OmniConfig()
    for name, value in FAMILIES[family].items():
        setattr(cfg.model.vision, name, value)
    cfg.model.vision.resample = resample
    cfg.data.min_pixels, cfg.data.max_pixels = QWEN_PIXELS["min_pixels"], QWEN_PIXELS["max_pixels"]
    return cfg


def hf_image_processor(family: str, fast: bool = False):
    if family == "qwen2_vl":
        if fast:
            from transformers import Qwen2VLImageProcessor
            return Qwen2VLImageProcessor(**QWEN_PIXELS)
        return Qwen2VLImageProcessorPil(**QWEN_PIXELS)
    if family == "clip":
        if fast:
            from transformers import CLIPImageProcessor
            return CLIPImageProcessor()
        return CLIPImageProcessorPil()  # shortest edge 224, centre crop 224, CLIP mean/std
    if fast:
        from transformers import SiglipImageProcessor
        return SiglipImageProcessor()
    return SiglipImageProcessorPil()  # 224 x 224, mean/std 0.5


def random_png(width: int, height: int, seed: int = 0) -> tuple[bytes, Image.Image]:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image


def as_hf_pixels(item, cfg) -> torch.Tensor:
    """Our values as HF lays them out: Qwen2-VL's rows as they are; CLIP's and SigLIP's (no
    merge, raster order) put back into the ``[C, H, W]`` image."""
    if cfg.model.vision.resize == "smart_resize":
        return item.values
    (gh, gw), p = item.size, cfg.model.vision.patch_size
    return item.values.view(gh, gw, 3, p, p).permute(2, 0, 3, 1, 4).reshape(3, gh * p, gw * p)


def assert_images_match(family: str, fast: bool):
    cfg = family_config(family, "torch" if fast else "pil")
    vision, processor = registry.get("vision"), hf_image_processor(family, fast)
    for seed, (width, height) in enumerate(SIZES):
        data, image = random_png(width, height, seed)
        (item,), = vision.decode(vision.sources[0], [("png", data)], cfg)
        hf = processor(images=[image], return_tensors="pt")
        want = hf["pixel_values"] if family == "qwen2_vl" else hf["pixel_values"][0]
        got = as_hf_pixels(item, cfg)
        assert got.shape == want.shape, (width, height)
        assert (got - want).abs().max() <= TOLERANCE, (width, height)
        if family == "qwen2_vl":
            assert [[1, *item.size]] == hf["image_grid_thw"].tolist(), (width, height)
        assert item.rows == item.values.shape[0] and item.tokens == item.rows // cfg.model.vision.merge_size ** 2


@pytest.mark.parametrize("family", FAMILIES)
def test_images_match_the_pil_image_processors(family):
    assert_images_match(family, fast=False)


@needs_torchvision
@pytest.mark.parametrize("family", FAMILIES)
def test_images_match_the_torchvision_image_processors(family):
    assert_images_match(family, fast=True)


# A 5-frame video that is resized (50x70 -> 56x56): its 3 temporal patches hold frames (0, 1),
# (2, 3) and (4, 4), the last repeated as Qwen2-VL's video processor fills it.
VIDEO = [random_png(70, 50, seed)[1] for seed in range(5)]


def video_items(resample: str) -> list:
    cfg = family_config("qwen2_vl", resample)
    vision = registry.get("vision")
    members = []
    for frame in VIDEO:
        out = io.BytesIO()
        frame.save(out, format="PNG")
        members.append(("png", out.getvalue()))
    (items,) = vision.decode(vision.sources[1], members, cfg)
    assert [item.info["time"] for item in items] == [0, 1, 2]
    assert all(item.size == items[0].size and item.tokens == item.rows // 4 for item in items)
    return items


def test_video_temporal_patches_hold_their_frames_as_qwen2_vl_lays_them_out():
    """HF's only Qwen2-VL video processor needs torchvision: here each temporal patch's frame k
    is checked against the PIL image processor's patches of that frame (which repeat it over T,
    in the same (C, T, p, p) vector layout)."""
    processor = hf_image_processor("qwen2_vl")
    for t, item in enumerate(video_items("pil")):
        rows = item.values.shape[0]
        for k in range(2):
            hf = processor(images=[VIDEO[min(2 * t + k, 4)]], return_tensors="pt")
            assert hf["image_grid_thw"].tolist() == [[1, *item.size]]
            want = hf["pixel_values"].view(rows, 3, 2, -1)[:, :, k]
            assert (item.values.view(rows, 3, 2, -1)[:, :, k] - want).abs().max() <= TOLERANCE


@needs_torchvision
def test_video_matches_the_qwen2_vl_video_processor():
    from transformers import Qwen2VLVideoProcessor
    processor = Qwen2VLVideoProcessor(**QWEN_PIXELS, cap_pixels_per_frame=False)
    hf = processor(videos=[VIDEO], return_tensors="pt")
    items = video_items("torch")
    assert hf["video_grid_thw"].tolist() == [[len(items), *items[0].size]]
    got = torch.cat([item.values for item in items])
    assert got.shape == hf["pixel_values_videos"].shape
    assert (got - hf["pixel_values_videos"]).abs().max() <= TOLERANCE


def qwen2_audio_processor(n_mels: int) -> Qwen2AudioProcessor:
    """Qwen2-Audio's processor over a four-word tokenizer: enough to count its audio tokens."""
    words = Tokenizer(models.WordLevel({"<unk>": 0, "<|AUDIO|>": 1, "<|audio_bos|>": 2, "<|audio_eos|>": 3},
                                       unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", pad_token="<unk>",
                                        additional_special_tokens=["<|AUDIO|>"])
    return Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=n_mels), tokenizer=tokenizer)


@pytest.mark.parametrize("n_mels, seconds", [(128, (0.004, 1.0, 7.777, 30.0)), (80, (2.5,))])
def test_audio_matches_qwen2_audios_processor(n_mels, seconds):
    """Sine + noise clips at 16 kHz: features, the valid length (its feature_attention_mask) and
    the LLM tokens (its audio token count) of each clip."""
    rng = np.random.default_rng(0)
    clips = []
    for s in seconds:
        t = np.arange(round(16000 * s)) / 16000
        clips.append(np.round(8000 * np.sin(2 * np.pi * 330 * t) + 1500 * rng.standard_normal(t.size))[:, None])
    cfg = OmniConfig()
    cfg.model.audio.features, cfg.model.audio.n_mels, cfg.data.max_audio_seconds = "whisper", n_mels, 30.0
    cfg.model.audio.projector = "pool_linear"  # Qwen2-Audio's: its token count
    audio = registry.get("audio")
    items = [item for (item,) in audio.decode(audio.sources[0], [("wav", wav_bytes(c, 16000)) for c in clips], cfg)]
    hf = qwen2_audio_processor(n_mels)(text=["<|AUDIO|>"] * len(clips), sampling_rate=16000, return_tensors="pt",
                                       audio=[(c[:, 0] / 32768.0).astype(np.float32) for c in clips], padding=True)
    for i, item in enumerate(items):
        assert item.size == (3000,) and item.values.shape == (3000, n_mels) and item.rows == 3000
        assert (item.values.T - hf["input_features"][i]).abs().max() <= TOLERANCE, seconds[i]
        assert item.info == {"valid_frames": int(hf["feature_attention_mask"][i].sum())}
        assert item.tokens == int((hf["input_ids"][i] == 1).sum()), seconds[i]
