"""Images as the vision encoder takes them: the patch order, the size an image is resized to, and
decoding bytes into patches (Pillow, or DALI with the same pixels).

How an image is sized (``resize``) and resampled (``resample``) follows a Hugging Face family's
image processor where asked: Qwen2-VL's ``smart_resize``, CLIP's shortest edge and centre crop,
SigLIP's square; Pillow's bicubic (HF's PIL processors) or torch's (HF's torchvision ones)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from megaomni.errors import BadSample
from megaomni.media import dali_decode, image_modes

RESIZES = ("fit", "smart_resize", "shortest_edge_crop", "square")  # model.vision.resize
FIXED_RESIZES = ("shortest_edge_crop", "square")  # an image_size x image_size square, whatever the image
RESAMPLES = ("pil", "torch")  # model.vision.resample
# OpenAI CLIP's normalisation (model.vision.image_mean / image_std): CLIP's processors and Qwen2-VL's.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def patch_positions(grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """(row, col) of every patch, in the order the encoder sees them: the ``merge x merge``
    patches that become one LLM token are adjacent, so merging is a reshape. Shape [h*w, 2]."""
    if grid_h % merge or grid_w % merge:
        raise ValueError(f"patch grid {grid_h}x{grid_w} is not a multiple of merge size {merge}")
    rows = torch.arange(grid_h).view(grid_h // merge, merge, 1, 1).expand(-1, -1, grid_w // merge, merge)
    cols = torch.arange(grid_w).view(1, 1, grid_w // merge, merge).expand(grid_h // merge, merge, -1, -1)
    # [H/m, m, W/m, m] -> [H/m, W/m, m, m]: token-major, then the patches inside a token
    rows = rows.permute(0, 2, 1, 3).reshape(-1)
    cols = cols.permute(0, 2, 1, 3).reshape(-1)
    return torch.stack([rows, cols], dim=-1)


def fit_size(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int,
             smart: bool = False) -> tuple[int, int]:
    """Size closest to ``height x width`` with the same aspect ratio, both sides multiples of
    ``factor`` (at least one ``factor`` each) and ``min_pixels <= h*w <= max_pixels``.

    ``smart``: Qwen2-VL's ``smart_resize`` exactly, which differs only at the edges: a side first
    rounds to a multiple of ``factor`` that may be 0 (the image is then scaled up to
    ``min_pixels``), and an aspect ratio over 200 is refused."""
    if max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(f"pixel budget [{min_pixels}, {max_pixels}] cannot hold one {factor}x{factor} "
                         "merge cell (data.min_pixels / data.max_pixels)")
    if smart and max(height, width) > 200 * min(height, width):
        raise BadSample("bad_image", f"{width}x{height} image has an aspect ratio over 200 (smart_resize's limit)")
    least = 0 if smart else factor
    h = max(least, round(height / factor) * factor)
    w = max(least, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    # Only for extreme aspect ratios, or a side smart_resize left at 0 (min_pixels 0)
    if not min_pixels <= h * w <= max_pixels or min(h, w) < factor:
        raise BadSample("bad_image", f"{width}x{height} image does not fit the pixel budget "
                                     f"[{min_pixels}, {max_pixels}] in {factor}-pixel steps")
    return h, w


def resized_size(height: int, width: int, *, resize: str, factor: int, min_pixels: int, max_pixels: int,
                 image_size: int) -> tuple[int, int]:
    """The size an image is resized to under ``resize`` (:data:`RESIZES`); shortest_edge_crop then
    crops its centre ``image_size`` square."""
    if resize == "square":
        return image_size, image_size
    if resize == "shortest_edge_crop":  # CLIP's: the short side to image_size, the long one truncated
        short, long = sorted((height, width))
        long = int(image_size * long / short)
        return (long, image_size) if width <= height else (image_size, long)
    return fit_size(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels,
                    smart=resize == "smart_resize")


def use_dali(decoder: str) -> bool:
    """``data.decoder``: "dali", "pillow", or "auto" (DALI where it is importable)."""
    return decoder == "dali" or (decoder == "auto" and dali_decode.available())


@contextlib.contextmanager
def _bad_image():
    """Pillow's errors on bad bytes as ``bad_image``, worded for a log."""
    try:
        yield
    except UnidentifiedImageError as e:  # its message names a BytesIO object, of no use in a log
        raise BadSample("bad_image", "undecodable image (not a format Pillow knows)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("bad_image", f"undecodable image ({e})") from e


def decode_image(data: bytes, mode: str, decoder: str = "auto") -> Image.Image:
    """Image bytes -> the fully decoded image in ``mode`` ("RGB" or "L"), the same pixels
    whichever of DALI and Pillow decodes (see :mod:`megaomni.media.dali_decode`); 16-bit and
    alpha images as :mod:`megaomni.media.image_modes` converts them (Pillow only)."""
    with _bad_image():
        image = Image.open(io.BytesIO(data))  # reads the header only: both paths share its checks
        if use_dali(decoder) and image_modes.plain(image) and dali_decode.handles(image.format, data):
            # None: DALI cannot decode it. It is stricter in places (a PNG without IEND), so Pillow
            # decides below and bad images fail with Pillow's reason and message on both paths.
            if (pixels := dali_decode.decode_rgb(data)) is not None:
                rgb = Image.fromarray(pixels, "RGB")
                return rgb if mode == "RGB" else rgb.convert(mode)  # Pillow's RGB -> L weights
        return image_modes.to_mode(image, mode)  # forces the full decode: truncation shows here


def _resample(image: Image.Image, h: int, w: int, channels: int, resample: str) -> torch.Tensor:
    """``image`` at ``h x w`` (bicubic), as float32 ``[h, w, C]`` of 0..255 values. "torch":
    torch's antialiased bicubic on the uint8 image, as torchvision resizes on the CPU for HF's
    fast image processors and its video processors (Pillow's differs, by up to ~15 levels when
    enlarging)."""
    if (h, w) == (image.height, image.width):
        pixels = np.asarray(image, dtype=np.float32)
    elif resample == "torch":
        uint8 = torch.from_numpy(np.array(image, dtype=np.uint8).reshape(image.height, image.width, channels))
        uint8 = F.interpolate(uint8.permute(2, 0, 1)[None], size=(h, w), mode="bicubic", align_corners=False,
                              antialias=True)
        return uint8[0].permute(1, 2, 0).float()
    else:
        pixels = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(pixels.reshape(h, w, channels))


def load_pixels(data: bytes, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int,
                in_channels: int = 3, decoder: str = "auto", resize: str = "fit", image_size: int = 0,
                resample: str = "pil", mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.5,)
                ) -> torch.Tensor:
    """Image bytes -> its normalised pixels ``(x / 255 - mean) / std``, float32 ``[H, W, C]``,
    sized by ``resize`` (:func:`resized_size`). ``mean`` and ``std``: one value, or one per channel;
    ``decoder`` is ``data.decoder`` (:func:`use_dali`)."""
    modes = {3: "RGB", 1: "L"}
    if in_channels not in modes:
        raise ValueError(f"in_channels={in_channels}: images can be decoded to 1 or 3 channels")
    image = decode_image(data, modes[in_channels], decoder)
    h, w = resized_size(image.height, image.width, resize=resize, factor=patch_size * merge_size,
                        min_pixels=min_pixels, max_pixels=max_pixels, image_size=image_size)
    pixels = _resample(image, h, w, in_channels, resample)
    if resize == "shortest_edge_crop":  # offsets rounded down, as both HF backends crop
        top, left = (h - image_size) // 2, (w - image_size) // 2
        pixels = pixels[top:top + image_size, left:left + image_size]
    mean_, std_ = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return (pixels / 255.0 - mean_) / std_


def patchify(frames: torch.Tensor, patch_size: int, merge_size: int) -> torch.Tensor:
    """The ``T`` frames ``[T, H, W, C]`` of one temporal patch -> patch vectors ``[gh*gw, C*T*p*p]``
    in :func:`patch_positions` order, each (C, T, p, p) flattened: Qwen2-VL's layout, and with
    ``T = 1`` the plain channel-major (C, p, p)."""
    t, h, w, c = frames.shape
    gh, gw = h // patch_size, w // patch_size
    # [T, gh, p, gw, p, C] -> [gh, gw, C, T, p, p]: raster-ordered patch vectors
    patches = frames.reshape(t, gh, patch_size, gw, patch_size, c).permute(1, 3, 5, 0, 2, 4)
    patches = patches.reshape(gh * gw, c * t * patch_size * patch_size)
    positions = patch_positions(gh, gw, merge_size)
    return patches[positions[:, 0] * gw + positions[:, 1]].contiguous()


def load_image(data: bytes, *, temporal_patch_size: int = 1, **how) -> tuple[torch.Tensor, tuple[int, int]]:
    """Image bytes -> (patches ``[gh*gw, C*T*p*p]`` (:func:`patchify`), (gh, gw)): the image's
    :func:`load_pixels` (``how``: its arguments), repeated over the ``T = temporal_patch_size``
    frames of a temporal patch as Qwen2-VL repeats a still. By default pixels are scaled to [-1, 1]."""
    pixels = load_pixels(data, **how)
    frames = pixels[None].expand(temporal_patch_size, -1, -1, -1)
    patch = how["patch_size"]
    return patchify(frames, patch, how["merge_size"]), (pixels.shape[0] // patch, pixels.shape[1] // patch)


def image_grid(data: bytes, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int,
               resize: str = "fit", image_size: int = 0) -> tuple[int, int]:
    """The patch grid :func:`load_image` gives, from the image's header alone (no pixel decode)."""
    with _bad_image():
        width, height = Image.open(io.BytesIO(data)).size
    if resize in FIXED_RESIZES:
        return image_size // patch_size, image_size // patch_size
    h, w = resized_size(height, width, resize=resize, factor=patch_size * merge_size, min_pixels=min_pixels,
                        max_pixels=max_pixels, image_size=image_size)
    return h // patch_size, w // patch_size
