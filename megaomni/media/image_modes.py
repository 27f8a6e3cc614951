"""Pillow image modes that its plain ``convert("RGB")`` gets wrong, brought to RGB or L:

- 16-bit samples (modes ``I;16*`` and ``I``, as Pillow opens a 16-bit greyscale PNG): ``convert``
  clips them at 255, so a typical 16-bit image turns almost all white. Here a sample keeps its
  high byte (``value >> 8``), the whole range kept, as Pillow itself reduces 16-bit RGB PNGs.
- Alpha (RGBA, LA, PA, and P / L / RGB with a transparent colour): ``convert`` drops it, so
  what was transparent shows whatever colour its pixels happen to hold. Here images are
  composited on :data:`BACKGROUND`, white, as a viewer shows a transparent image on a page.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUND = (255, 255, 255)  # what shows through transparent pixels: white
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA or "transparency" in image.info


def plain(image: Image.Image) -> bool:
    """Whether ``image`` (its header read suffices) converts right with Pillow's ``convert`` alone,
    as any decoder that ignores alpha and scales 16-bit samples another way would give it."""
    return image.mode not in SIXTEEN_BIT and not has_alpha(image)


def high_byte(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image -> 8-bit L, each sample ``value >> 8`` (mode ``I`` clipped to 0..65535 first)."""
    samples = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(samples, 0, 0xFFFF) >> 8).astype(np.uint8), "L")


def on_background(image: Image.Image) -> Image.Image:
    """An image with alpha -> RGB composited on :data:`BACKGROUND`: ``(c * a + b * (255 - a)) / 255``,
    rounded to nearest."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.int32)
    alpha = rgba[..., 3:]
    background = np.asarray(BACKGROUND, dtype=np.int32)
    rgb = (rgba[..., :3] * alpha + background * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` fully decoded in ``mode`` ("RGB" or "L"), 16-bit and alpha images as the module says."""
    if image.mode in SIXTEEN_BIT:
        image = high_byte(image)
    elif has_alpha(image):
        image = on_background(image)
    return image.convert(mode)  # also when already in ``mode``: a copy forces the full decode
