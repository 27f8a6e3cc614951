"""Images as the vision encoder takes them: the patch order, the size an image is resized to, and
decoding bytes into patches (Pillow, or DALI with the same pixels)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from megaomni.errors import BadSample
from megaomni.media import dali_decode


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


def fit_size(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Size closest to ``height x width`` with the same aspect ratio, both sides multiples of
    ``factor`` (at least one ``factor`` each) and ``min_pixels <= h*w <= max_pixels``."""
    if max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(f"pixel budget [{min_pixels}, {max_pixels}] cannot hold one {factor}x{factor} "
                         "merge cell (data.min_pixels / data.max_pixels)")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    if not min_pixels <= h * w <= max_pixels:  # only for extreme aspect ratios
        raise BadSample("bad_image", f"{width}x{height} image does not fit the pixel budget "
                                     f"[{min_pixels}, {max_pixels}] in {factor}-pixel steps")
    return h, w


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
    whichever of DALI and Pillow decodes (see :mod:`megaomni.media.dali_decode`)."""
    with _bad_image():
        image = Image.open(io.BytesIO(data))  # reads the header only: both paths share its checks
        if use_dali(decoder) and dali_decode.handles(image.format, data):
            # None: DALI cannot decode it. It is stricter in places (a PNG without IEND), so Pillow
            # decides below and bad images fail with Pillow's reason and message on both paths.
            if (pixels := dali_decode.decode_rgb(data)) is not None:
                rgb = Image.fromarray(pixels, "RGB")
                return rgb if mode == "RGB" else rgb.convert(mode)  # Pillow's RGB -> L weights
        return image.convert(mode)  # forces the full decode: truncation shows here


def load_image(data: bytes, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int,
               in_channels: int = 3, decoder: str = "auto") -> tuple[torch.Tensor, tuple[int, int]]:
    """Image bytes -> (patches ``[gh*gw, C*p*p]`` in :func:`patch_positions` order, (gh, gw)).

    Pixels are scaled to [-1, 1]; each patch vector is channel-major (C, p, p) flattened.
    ``decoder`` is ``data.decoder`` (:func:`use_dali`).
    """
    modes = {3: "RGB", 1: "L"}
    if in_channels not in modes:
        raise ValueError(f"in_channels={in_channels}: images can be decoded to 1 or 3 channels")
    image = decode_image(data, modes[in_channels], decoder)
    factor = patch_size * merge_size
    h, w = fit_size(image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).reshape(h, w, in_channels))
    pixels = (pixels / 255.0 - 0.5) / 0.5
    gh, gw = h // patch_size, w // patch_size
    # [H, W, C] -> [gh, p, gw, p, C] -> [gh, gw, C, p, p]: raster-ordered patch vectors
    patches = pixels.view(gh, patch_size, gw, patch_size, in_channels).permute(0, 2, 4, 1, 3)
    patches = patches.reshape(gh * gw, in_channels * patch_size * patch_size)
    positions = patch_positions(gh, gw, merge_size)
    return patches[positions[:, 0] * gw + positions[:, 1]].contiguous(), (gh, gw)


def image_grid(data: bytes, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The patch grid :func:`load_image` gives, from the image's header alone (no pixel decode)."""
    with _bad_image():
        width, height = Image.open(io.BytesIO(data)).size
    h, w = fit_size(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)
    return h // patch_size, w // patch_size
