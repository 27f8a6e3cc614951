"""DALI image decoding (data.decoder): the same patches as Pillow's, the same bad-image verdicts.

The comparisons need NVIDIA DALI (``pip install -e .[dali]``) and are skipped without it; the
config rule for data.decoder=dali always runs.
"""

from __future__ import annotations

import io
import multiprocessing

import numpy as np
import pytest
from PIL import Image

from megaomni.config import ConfigError, load_config
from megaomni.errors import BadSample
from megaomni.media import dali_decode
from megaomni.media.images import decode_image, load_image
from megaomni.validation import validate
from tests.data.helpers import rgb16_png

needs_dali = pytest.mark.skipif(not dali_decode.available(),
                                reason=f"NVIDIA DALI is not importable ({dali_decode.import_error()})")
BUDGET = dict(patch_size=14, merge_size=2, min_pixels=784, max_pixels=12544)
LEVEL = 2 / 255  # one uint8 level in the patches' [-1, 1] scale
# JPEG: DALI's CPU decoder and Pillow both run libjpeg-turbo's default IDCT and upsampling, so
# the pixels measured here are identical (max 0). The contract allows IDCT-level differences of
# 2 levels a decoded pixel; the bicubic resize can stretch those by its kernel's |weights| (about
# 1.17 a side: 2.7 levels) and round once more, hence 4 levels on the patches.
JPEG_PIXEL_LEVELS = 2
JPEG_PATCH_LEVELS = 4
SIZES = [(56, 84), (300, 200), (10, 12), (30, 50), (100, 35), (33, 250), (1, 1)]  # width, height


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus noise: closer to a photograph's JPEG than pure noise."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 7 + c) * np.cos(y / 11 - c) for c in range(3)], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


@pytest.fixture
def dali_calls(monkeypatch) -> list[bool]:
    """One entry a DALI decode: whether DALI gave pixels (so a test knows DALI really ran)."""
    calls: list[bool] = []
    decode = dali_decode.decode_rgb

    def counted(data: bytes):
        pixels = decode(data)
        calls.append(pixels is not None)
        return pixels

    monkeypatch.setattr(dali_decode, "decode_rgb", counted)
    return calls


def both(data: bytes, channels: int = 3):
    """(DALI's, Pillow's) load_image results."""
    return [load_image(data, **BUDGET, in_channels=channels, decoder=d) for d in ("dali", "pillow")]


@needs_dali
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1"])
@pytest.mark.parametrize("width,height", SIZES)
def test_png_patches_identical(width, height, mode, channels, dali_calls):
    data = encode(Image.fromarray(photo(width, height)).convert(mode), "PNG")
    (got, grid), (want, want_grid) = both(data, channels)
    assert dali_calls == ([] if mode == "RGBA" else [True])  # alpha is Pillow's to composite (image_modes)
    assert grid == want_grid and got.dtype == want.dtype
    assert got.equal(want)  # lossless: exactly equal


JPEGS = {  # name: (Pillow image mode, save options)
    "q90 4:2:0": ("RGB", dict(quality=90)),
    "q50 4:2:2": ("RGB", dict(quality=50, subsampling=1)),
    "q100 4:4:4": ("RGB", dict(quality=100, subsampling=0)),
    "progressive": ("RGB", dict(quality=85, progressive=True)),
    "greyscale": ("L", dict(quality=85)),
    "CMYK": ("CMYK", dict(quality=85)),
}


@needs_dali
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("kind", list(JPEGS))
@pytest.mark.parametrize("width,height", SIZES)
def test_jpeg_within_tolerance(width, height, kind, channels, dali_calls):
    mode, options = JPEGS[kind]
    data = encode(Image.fromarray(photo(width, height, seed=width)).convert(mode), "JPEG", **options)
    target = {3: "RGB", 1: "L"}[channels]
    pixels = [np.asarray(decode_image(data, target, d), dtype=np.int16) for d in ("dali", "pillow")]
    assert pixels[0].shape == pixels[1].shape
    assert np.abs(pixels[0] - pixels[1]).max() <= JPEG_PIXEL_LEVELS
    (got, grid), (want, want_grid) = both(data, channels)
    assert dali_calls == [True, True]
    assert grid == want_grid
    assert (got - want).abs().max().item() <= JPEG_PATCH_LEVELS * LEVEL + 1e-6


@needs_dali
def test_exif_orientation_is_ignored_as_pillow_does(dali_calls):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90°": DALI would apply it by default, Pillow's open does not
    image = Image.fromarray(photo(84, 56))
    for data in (encode(image, "JPEG", exif=exif.tobytes()), encode(image, "PNG", exif=exif.tobytes())):
        (got, grid), (want, want_grid) = both(data)
        assert grid == want_grid == (4, 6) and got.equal(want)
    assert dali_calls == [True, True]


@needs_dali
def test_16bit_png_is_left_to_pillow(dali_calls):
    """DALI rounds 16-bit samples to 8 bits (x / 257), Pillow keeps the high byte: 1 level apart."""
    data = rgb16_png(np.random.default_rng(0).integers(0, 65536, (56, 56, 3)))
    assert dali_decode.decode_rgb(data) is not None  # DALI can decode it ...
    dali_calls.clear()
    (got, _), (want, _) = both(data)
    assert dali_calls == [] and got.equal(want)  # ... but is not asked to


@needs_dali
def test_png_without_iend_decodes_as_pillow_does(dali_calls):
    data = encode(Image.fromarray(photo(56, 56)), "PNG")[:-12]  # all pixels; the IEND chunk cut
    (got, _), (want, _) = both(data)
    assert dali_calls == [False]  # DALI refuses it, so Pillow decides
    assert got.equal(want)


def corrupt_images() -> dict[str, bytes]:
    png, jpeg = (encode(Image.fromarray(photo(56, 56)), fmt) for fmt in ("PNG", "JPEG"))
    damaged = bytearray(png)
    damaged[len(png) // 2:len(png) // 2 + 50] = bytes(50)  # bad filter bytes inside the IDAT stream
    return {"png truncated": png[:len(png) // 2], "jpeg truncated": jpeg[:len(jpeg) // 2],
            "jpeg without EOI": jpeg[:-2], "png damaged": bytes(damaged), "jpeg header only": jpeg[:200],
            "garbage": b"not an image at all", "empty": b""}


@needs_dali
@pytest.mark.parametrize("name", list(corrupt_images()))
def test_corrupt_image_is_bad_image_on_both(name, dali_calls):
    data = corrupt_images()[name]
    errors = []
    for decoder in ("dali", "pillow"):
        with pytest.raises(BadSample) as e:
            load_image(data, **BUDGET, decoder=decoder)
        errors.append((e.value.reason, e.value.detail))
    assert errors[0] == errors[1] and errors[0][0] == "bad_image"
    # DALI was asked, and failed, wherever Pillow's header read (shared by both paths) passed
    assert dali_calls == ([] if name in ("jpeg header only", "garbage", "empty") else [False])


def _decode_sum(data: bytes) -> int:
    return int(dali_decode.decode_rgb(data).sum())


@needs_dali
def test_forked_worker_decodes_after_its_parent():
    """data.workers forks the training process; DALI's threads do not survive a fork, so reusing
    the parent's pipeline would hang: each process needs its own."""
    data = encode(Image.fromarray(photo(56, 56)), "PNG")
    want = _decode_sum(data)  # the parent's pipeline exists before the fork
    pool = multiprocessing.get_context("fork").Pool(1)
    try:
        assert pool.apply_async(_decode_sum, (data,)).get(timeout=60) == want
    finally:
        pool.terminate()


# ----------------------------------------------------------------------------- data.decoder rule


def test_decoder_dali_without_dali_is_one_line_config_error(monkeypatch):
    monkeypatch.setattr(dali_decode, "import_error", lambda: "No module named 'nvidia'")
    with pytest.raises(ConfigError) as err:
        validate(load_config(None, ["data.decoder=dali"]), 1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data.decoder='dali': NVIDIA DALI is not importable (No module named 'nvidia')")
    assert "pip install -e .[dali]" in message and "data.decoder=auto" in message
    # auto and pillow pass this rule: validation goes on to the next one (the empty data.path)
    for decoder in ("auto", "pillow"):
        with pytest.raises(ConfigError, match="data.path is empty"):
            validate(load_config(None, [f"data.decoder={decoder}"]), 1)


def test_unknown_decoder_is_config_error():
    with pytest.raises(ConfigError, match=r"^data.decoder='opencv': valid: auto, pillow, dali$"):
        validate(load_config(None, ["data.decoder=opencv"]), 1)


def test_auto_without_dali_and_pillow_never_call_dali(monkeypatch, dali_calls):
    monkeypatch.setattr(dali_decode, "import_error", lambda: "No module named 'nvidia'")
    data = encode(Image.fromarray(photo(56, 56)), "PNG")
    for decoder in ("auto", "pillow"):
        load_image(data, **BUDGET, decoder=decoder)
    assert dali_calls == []
