"""16-bit and alpha images decode to the pixels megaomni.media.image_modes documents (references
computed here with numpy), on the Pillow path, whatever data.decoder asks for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from megaomni.media import dali_decode
from megaomni.media.images import decode_image
from tests.data.helpers import rgb16_png

WHITE = 255


def encoded(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **save)
    return out.getvalue()


def gradient16(height: int = 32, width: int = 64) -> np.ndarray:
    """Every 16-bit level range of a real image: 0 to 65535 across the width, a row offset down."""
    x = np.linspace(0, 65535, width).round().astype(np.int64)
    return ((x[None, :] + 97 * np.arange(height)[:, None]) % 65536).astype(np.uint16)


def composited(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The float reference: colour weighted by alpha, white by the rest."""
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + WHITE * (1 - a)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_16_bit_grey_keeps_its_high_byte(mode):
    samples = gradient16()
    data = encoded(Image.fromarray(samples))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # a 16-bit PNG, as Pillow opens it
    pixels = np.asarray(decode_image(data, mode, "pillow"))
    expected = (samples >> 8).astype(np.uint8)
    np.testing.assert_array_equal(pixels, np.stack([expected] * 3, axis=-1) if mode == "RGB" else expected)
    assert (pixels == 255).mean() < 0.01  # a plain convert("RGB") saturates ~99.5% of them


def test_16_bit_rgb_keeps_its_high_byte():
    samples = np.stack([gradient16(8, 16), gradient16(8, 16)[::-1], gradient16(8, 16)[:, ::-1]], axis=-1)
    pixels = np.asarray(decode_image(rgb16_png(samples), "RGB", "pillow"))
    np.testing.assert_array_equal(pixels, (samples >> 8).astype(np.uint8))


def test_rgba_is_composited_on_white():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, 40).round().astype(np.uint8), (24, 1))  # transparent to opaque
    pixels = np.asarray(decode_image(encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), "RGB", "pillow"))
    np.testing.assert_allclose(pixels, composited(rgb, alpha), atol=1)
    assert (pixels[:, 0] == WHITE).all() and (pixels[:, -1] == rgb[:, -1]).all()  # fully transparent, opaque


def test_grey_alpha_to_l():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    alpha = np.full_like(grey, 64)
    pixels = np.asarray(decode_image(encoded(Image.fromarray(np.dstack([grey, alpha]), "LA")), "L", "pillow"))
    np.testing.assert_allclose(pixels, composited(np.dstack([grey] * 3), alpha)[..., 0], atol=1)


def test_palette_transparency_shows_white():
    image = Image.new("P", (8, 4))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1] * 16)
    pixels = np.asarray(decode_image(encoded(image, transparency=0), "RGB", "pillow"))
    np.testing.assert_array_equal(pixels[:, 0::2], np.full((4, 4, 3), WHITE))  # index 0: transparent
    np.testing.assert_array_equal(pixels[:, 1::2], np.tile([200, 100, 50], (4, 4, 1)))


def test_dali_never_gets_alpha_or_16_bit(monkeypatch):
    """DALI would drop alpha (and scale 16-bit samples another way): such images take Pillow's
    path even under data.decoder=dali; a plain RGB PNG still goes to DALI."""
    given = []
    monkeypatch.setattr(dali_decode, "decode_rgb", lambda data: given.append(data))  # None: "cannot decode"
    rgba = encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    grey16 = encoded(Image.fromarray(gradient16(8, 8)))
    for data in (rgba, grey16):
        decode_image(data, "RGB", "dali")
    assert given == []
    assert np.asarray(decode_image(rgba, "RGB", "dali")).min() == WHITE
    plain = encoded(Image.new("RGB", (8, 8), (1, 2, 3)))
    decode_image(plain, "RGB", "dali")
    assert given == [plain]
