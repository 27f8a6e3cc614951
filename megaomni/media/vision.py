"""Images and videos, through the vision encoder.

A still image is one item; a video is a sequence of frames (at most ``data.max_video_frames``,
picked evenly) in runs of ``model.vision.temporal_patch_size``, each run an item with its
temporal index ``t = 0..T-1``, and its ``<video>`` placeholder expands to the image pads of all
its items, one after another. Every item becomes ``(gh / merge) * (gw / merge)`` LLM tokens,
and one more for a kept class token."""

from __future__ import annotations

from dataclasses import replace

import torch

from megaomni.checks import require, require_choice, require_heads, require_positive, require_stack
from megaomni.config import VISION_POSITIONS, VisionConfig
from megaomni.errors import BadSample
from megaomni.media.images import (
    FIXED_RESIZES,
    RESAMPLES,
    RESIZES,
    image_grid,
    load_pixels,
    patchify,
)
from megaomni.media.modality import (
    EncoderFlops,
    ImportedOnUse,
    MediaItem,
    Modality,
    Source,
)

IMAGE, VIDEO = "<image>", "<video>"  # placeholders as written in conversation text
IMAGE_EXTS = ("png", "jpg", "jpeg")
VIDEO_FIELD = "video"  # frame N of the video: KEY.video.N.png


def vision_tokens(grid_h: int, grid_w: int, merge: int, class_row: bool = False) -> int:
    """LLM tokens an image of ``grid_h x grid_w`` patches turns into (``class_row``: and its class
    token's feature)."""
    return (grid_h // merge) * (grid_w // merge) + int(class_row)


def video_frame_indices(count: int, cap: int) -> list[int]:
    """The frames of a ``count``-frame video that are kept under ``data.max_video_frames=cap``:
    all of them, or the middle frame of each of ``cap`` equal stretches of the video."""
    if not 0 < cap < count:
        return list(range(count))
    return [(2 * i + 1) * count // (2 * cap) for i in range(cap)]


def temporal_position(time: int, cfg) -> int:
    """The M-RoPE temporal position of a video's ``time``-th temporal group: ``time`` (Qwen2-VL),
    or with ``model.vision.tokens_per_second`` its start in seconds times that, truncated, in
    float32 as Qwen2.5-VL's ``get_rope_index`` computes it from ``second_per_grid_ts`` (with
    ``model.vision.seconds_first``, as Qwen2.5-Omni's does: the same products in another order)."""
    vision = cfg.model.vision
    if not vision.tokens_per_second:
        return time
    seconds = torch.tensor(vision.temporal_patch_size / cfg.data.video_fps, dtype=torch.float32)
    if vision.seconds_first:
        return int(time * seconds * vision.tokens_per_second)
    return int(time * (vision.tokens_per_second * seconds))


def _sizing(cfg) -> dict:
    """The arguments :func:`image_grid` takes, from the configuration."""
    vision, data = cfg.model.vision, cfg.data
    return {"patch_size": vision.patch_size, "merge_size": vision.merge_size, "min_pixels": data.min_pixels,
            "max_pixels": data.max_pixels, "resize": vision.resize, "image_size": vision.image_size}


class Vision(Modality):
    name = "vision"
    pad = "<|image_pad|>"
    section = VisionConfig
    budget, rows_name = "max_patches", "patches"
    encoder = ImportedOnUse("megaomni.media.vision_encoder:VisionEncoder")
    sources = (
        Source(IMAGE, IMAGE_EXTS, "image", unread_exts=("gif", "webp", "bmp", "tif", "tiff", "heic", "avif")),
        # Tokenizers trained before video support lack <video>; their video samples are skipped.
        Source(VIDEO, IMAGE_EXTS, "video frame", field=VIDEO_FIELD, one_medium="video",
               unread_exts=("mp4", "webm", "mkv", "avi", "mov"), optional=True),
    )

    def _item(self, grid: tuple[int, int], cfg, time: int, frames: list) -> MediaItem:
        """The item of one temporal patch: ``frames`` its pixels (None where only measured)."""
        gh, gw = grid
        vision = cfg.model.vision
        values = None if frames[0] is None else patchify(torch.stack(frames), vision.patch_size, vision.merge_size)
        tokens = vision_tokens(gh, gw, vision.merge_size, vision.class_token and vision.keep_class_token)
        return MediaItem((gh, gw), gh * gw, tokens, {"time": time}, values)

    def _pictures(self, source: Source, members: list[tuple[str, bytes]], cfg, read) -> list[list[MediaItem]]:
        """``read(bytes)``: (pixels or None, grid). A video's kept frames must share one grid."""
        step = cfg.model.vision.temporal_patch_size
        if not source.one_medium:
            return [[self._item(grid, cfg, 0, [pixels] * step)] for pixels, grid in (read(data) for _, data in members)]
        if not members:
            return []
        kept = video_frame_indices(len(members), cfg.data.max_video_frames)
        frames = [read(members[i][1]) for i in kept]
        for i, (_, grid) in zip(kept, frames):
            if grid != frames[0][1]:
                first = frames[0][1]
                raise BadSample("bad_video", f"frame {i} fits {grid[0]}x{grid[1]} patches, frame "
                                f"{kept[0]} {first[0]}x{first[1]}: a video's frames must share one size")
        frames += frames[-1:] * (-len(frames) % step)  # as Qwen2-VL fills the last temporal patch
        return [[self._item(frames[0][1], cfg, t, [pixels for pixels, _ in frames[t * step:(t + 1) * step]])
                 for t in range(len(frames) // step)]]

    def decode(self, source, members, cfg):
        vision, data = cfg.model.vision, cfg.data
        how = {**_sizing(cfg), "in_channels": vision.in_channels, "decoder": data.decoder,
               "resample": vision.resample, "mean": tuple(vision.image_mean), "std": tuple(vision.image_std)}

        def read(blob: bytes):
            pixels = load_pixels(blob, **how)
            return pixels, (pixels.shape[0] // vision.patch_size, pixels.shape[1] // vision.patch_size)
        return self._pictures(source, members, cfg, read)

    def measure(self, source, members, cfg):
        return self._pictures(source, members, cfg, lambda b: (None, image_grid(b, **_sizing(cfg))))

    def positions(self, items, start, cfg):
        """Qwen2-VL's: each item's merged grid, its rows by height and its columns by width, and its
        place in time (:func:`temporal_position`; 0 for a still image), all offset by ``start``."""
        grids, merge = [], cfg.model.vision.merge_size
        for item in items:
            h, w = (side // merge for side in item.size)
            rows = torch.arange(h).view(h, 1).expand(h, w).reshape(-1)
            cols = torch.arange(w).view(1, w).expand(h, w).reshape(-1)
            grids.append(torch.stack([torch.full_like(rows, temporal_position(item.info["time"], cfg)), rows, cols]))
        return start + torch.cat(grids, dim=1)

    def flops(self, section, llm_hidden):
        # The layers run, and a class token's row in each image.
        return EncoderFlops.transformer(replace(section, num_layers=section.layers_used()), llm_hidden,
                                        extra_rows=int(section.class_token))

    def check(self, cfg):
        vision, data = cfg.model.vision, cfg.data
        require_positive("model.vision", vision, ("num_layers", "hidden_size", "num_attention_heads",
                                                  "ffn_hidden_size", "patch_size", "merge_size", "temporal_patch_size"))
        rope = vision.position_embedding == "rope_2d"
        require_heads("model.vision", vision.hidden_size, vision.num_attention_heads, 4 if rope else 1)
        require_stack("model.vision", vision)
        self._check_tower(cfg)
        require(vision.projector_hidden_size >= 0, f"model.vision.projector_hidden_size="
                f"{vision.projector_hidden_size}: must be >= 0 (0: the LLM's hidden size)")
        self._check_time_and_windows(cfg)
        require(vision.resize in RESIZES, f"model.vision.resize={vision.resize}: must be one of {', '.join(RESIZES)}")
        require(vision.resample in RESAMPLES,
                f"model.vision.resample={vision.resample}: must be one of {', '.join(RESAMPLES)}")
        for name in ("image_mean", "image_std"):
            values = getattr(vision, name)
            require(len(values) in (1, vision.in_channels), f"model.vision.{name}={values}: needs one value, or "
                    f"one per channel (model.vision.in_channels={vision.in_channels})")
        require(all(s > 0 for s in vision.image_std), f"model.vision.image_std={vision.image_std}: must be positive")
        cell = vision.patch_size * vision.merge_size
        if vision.resize in FIXED_RESIZES:
            require(vision.image_size > 0 and vision.image_size % cell == 0,
                    f"model.vision.image_size={vision.image_size}: must be a positive multiple of "
                    f"model.vision.patch_size*merge_size={cell}")
            patches = (vision.image_size // vision.patch_size) ** 2
            require(data.max_patches == 0 or data.max_patches >= patches,
                    f"data.max_patches={data.max_patches}: must hold one {vision.image_size}-pixel image, "
                    f"{patches} patches (or 0: no limit)")
            return
        require(data.max_pixels >= cell * cell, f"data.max_pixels={data.max_pixels}: must hold one merged patch, "
                f"(model.vision.patch_size*merge_size)^2={cell * cell}")
        require(data.min_pixels <= data.max_pixels,
                f"data.min_pixels={data.min_pixels}: must not exceed data.max_pixels={data.max_pixels}")

    def _check_tower(self, cfg):
        """The CLIP / SigLIP options: positions, class token, feature layer."""
        vision = cfg.model.vision
        require_choice("model.vision.position_embedding", vision.position_embedding, VISION_POSITIONS)
        require(vision.position_embedding != "learned" or vision.resize in FIXED_RESIZES,
                f"model.vision.resize={vision.resize}: learned positions hold one grid, so images need one size "
                f"(resize {' or '.join(FIXED_RESIZES)}, to image_size)")
        require(1 <= vision.layers_used() <= vision.num_layers,
                f"model.vision.feature_layer={vision.feature_layer}: names no layer of num_layers="
                f"{vision.num_layers} (0: the last, normed; n: layer n; -n: hidden_states[-n], -1 the last)")
        require(vision.class_token or not vision.keep_class_token,
                "model.vision.keep_class_token=true: needs model.vision.class_token=true")
        if vision.class_token and vision.keep_class_token:
            require(vision.merge_size == 1, f"model.vision.merge_size={vision.merge_size}: a kept class token "
                    "cannot be merged with patches (merge_size=1, or keep_class_token=false)")
            require(not cfg.model.llm.mrope_section, "model.llm.mrope_section: a kept class token has no place "
                    "in the patch grid multimodal RoPE reads (keep_class_token=false, or plain RoPE)")


    def _check_time_and_windows(self, cfg):
        vision, cell = cfg.model.vision, cfg.model.vision.patch_size * cfg.model.vision.merge_size
        require(vision.window_size >= 0 and vision.window_size % cell == 0, f"model.vision.window_size="
                f"{vision.window_size}: must be 0 (no windows) or a multiple of patch_size*merge_size={cell}")
        require(not vision.full_attention_layers or vision.window_size, f"model.vision.full_attention_layers="
                f"{vision.full_attention_layers}: only with windowed attention (model.vision.window_size > 0)")
        require(not (vision.window_size and vision.class_token), f"model.vision.window_size={vision.window_size}: "
                "windows cut an image's patches, which a class token does not belong to (model.vision.class_token)")
        require(all(0 <= i < vision.num_layers for i in vision.full_attention_layers),
                f"model.vision.full_attention_layers={vision.full_attention_layers}: layer indices from 0 to "
                f"model.vision.num_layers-1={vision.num_layers - 1}")
        require(vision.tokens_per_second >= 0, f"model.vision.tokens_per_second={vision.tokens_per_second}: must be "
                ">= 0 (0: a video's temporal positions are its groups' indices)")
        require(vision.seconds_per_chunk >= 0, f"model.vision.seconds_per_chunk={vision.seconds_per_chunk}: must be "
                ">= 0 (0: no chunks)")
        require(cfg.data.video_fps > 0, f"data.video_fps={cfg.data.video_fps}: must be positive")


VISION = Vision()
