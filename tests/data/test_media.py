from __future__ import annotations

import importlib.util
import io
import math
import wave

import numpy as np
import pytest
import torch
from PIL import Image

from megaomni.errors import BadSample
from megaomni.media.images import load_image, patch_positions
from megaomni.media.sounds import load_audio, log_mel, resample

PATCH, MERGE = 14, 2
FACTOR = PATCH * MERGE


# ----------------------------------------------------------------------------- log-mel


def reference_log_mel(x: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """Float64, written out plainly: reflect padding, periodic Hann, explicit DFT, HTK triangles."""
    pad = n_fft // 2
    padded = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + len(x) // hop
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(n_frames)])
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(n, k) / n_fft)  # [n_fft, n_freqs]
    power = np.abs(frames @ dft) ** 2  # [frames, n_freqs]

    def hz_to_mel(f):
        return 2595 * np.log10(1 + f / 700)

    def mel_to_hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(0, hz_to_mel(sr / 2), n_mels + 2))
    bank = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        for j, f in enumerate(freqs):
            bank[j, m] = max(0.0, min((f - lo) / (centre - lo), (hi - f) / (hi - centre)))
    logs = np.log10(np.maximum(power @ bank, 1e-10))
    logs = np.maximum(logs, logs.max() - 8)
    return (logs + 4) / 4


def test_log_mel_matches_float64_reference():
    rng = np.random.default_rng(0)
    sr, n = 16000, 8000
    t = np.arange(n) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)
    got = log_mel(torch.tensor(x, dtype=torch.float32), sample_rate=sr, n_fft=400, hop_length=160, n_mels=40)
    want = reference_log_mel(x, sr, 400, 160, 40)
    assert got.shape == (1 + n // 160, 40) and got.dtype == torch.float32
    # float32 STFT vs float64 DFT (observed ~1e-6): 1e-4 here is 4e-4 decades, ~0.1% in mel power.
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=0)


def test_log_mel_rejects_clip_shorter_than_half_window():
    with pytest.raises(BadSample) as e:
        log_mel(torch.zeros(100), sample_rate=16000, n_fft=400, hop_length=160, n_mels=40)
    assert e.value.reason == "bad_audio"


# ----------------------------------------------------------------------------- images


def png(width: int, height: int, seed: int = 0) -> tuple[bytes, Image.Image]:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), image


@pytest.mark.parametrize("width,height,min_pixels,max_pixels", [
    (56, 84, 784, 12544),  # already fits: unchanged
    (300, 200, 784, 12544),  # too big: scaled down
    (10, 12, 784, 12544),  # too small: scaled up
    (30, 50, 784, 12544),  # rounded to the grid
    (640, 480, 784, 448 * 448),
    (100, 35, 4 * 784, 12544),
])
def test_load_image_resize_rules(width, height, min_pixels, max_pixels):
    data, _ = png(width, height)
    patches, (gh, gw) = load_image(data, patch_size=PATCH, merge_size=MERGE, min_pixels=min_pixels,
                                   max_pixels=max_pixels)
    h, w = gh * PATCH, gw * PATCH
    assert h % FACTOR == 0 and w % FACTOR == 0 and h >= FACTOR and w >= FACTOR
    assert min_pixels <= h * w <= max_pixels
    # Aspect kept up to the grid: some scale s puts both sides within one merge cell of h, w.
    s = math.sqrt(h * w / (height * width))
    assert abs(h - s * height) <= FACTOR and abs(w - s * width) <= FACTOR, (h, w)
    if min_pixels <= width * height <= max_pixels and width % FACTOR == 0 and height % FACTOR == 0:
        assert (h, w) == (height, width)
    assert patches.shape == (gh * gw, 3 * PATCH * PATCH)


def test_load_image_keeps_aspect_when_budget_allows():
    data, _ = png(640, 480)
    _, (gh, gw) = load_image(data, patch_size=PATCH, merge_size=MERGE, min_pixels=784, max_pixels=448 * 448)
    assert abs(gw / gh - 640 / 480) / (640 / 480) < 0.1


def test_load_image_rejects_unfittable_aspect():
    data, _ = png(2000, 3)
    with pytest.raises(BadSample) as e:
        load_image(data, patch_size=PATCH, merge_size=MERGE, min_pixels=784, max_pixels=12544)
    assert e.value.reason == "bad_image"


@pytest.mark.parametrize("width,height", [(84, 56), (100, 60)])
def test_patches_are_slices_in_patch_positions_order(width, height):
    data, image = png(width, height, seed=1)
    patches, (gh, gw) = load_image(data, patch_size=PATCH, merge_size=MERGE, min_pixels=784, max_pixels=12544)
    if (gh * PATCH, gw * PATCH) != (height, width):
        image = image.resize((gw * PATCH, gh * PATCH), Image.Resampling.BICUBIC)
    pixels = (np.asarray(image, dtype=np.float32) / 255 - 0.5) / 0.5  # [H, W, C]
    positions = patch_positions(gh, gw, MERGE)
    assert patches.shape[0] == positions.shape[0]
    for i, (r, c) in enumerate(positions.tolist()):
        block = pixels[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH, :]
        np.testing.assert_allclose(patches[i].numpy(), block.transpose(2, 0, 1).reshape(-1), atol=1e-6)


def test_truncated_image_is_bad_sample():
    data, _ = png(56, 56)
    with pytest.raises(BadSample) as e:
        load_image(data[: len(data) // 2], patch_size=PATCH, merge_size=MERGE, min_pixels=784, max_pixels=12544)
    assert e.value.reason == "bad_image"


# ----------------------------------------------------------------------------- audio


def wav_bytes(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(samples.shape[1])
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2" if width == 2 else "u1").tobytes())
    return out.getvalue()


def test_wav_round_trip_mono_and_stereo():
    rng = np.random.default_rng(0)
    mono = rng.integers(-32768, 32768, (1000, 1))
    waveform, rate = load_audio(wav_bytes(mono, 16000), "wav")
    assert rate == 16000 and waveform.dtype == torch.float32
    np.testing.assert_array_equal(waveform.numpy(), mono[:, 0] / 32768.0)
    stereo = rng.integers(-32768, 32768, (1000, 2))
    waveform, rate = load_audio(wav_bytes(stereo, 8000), "wav")
    assert rate == 8000
    np.testing.assert_allclose(waveform.numpy(), stereo.mean(axis=1) / 32768.0, atol=1e-7)


@pytest.mark.parametrize("data,ext", [(b"RIFF garbage", "wav"), (b"", "wav"), (b"x", "ogg")])
def test_undecodable_audio_is_bad_sample(data, ext):
    with pytest.raises(BadSample) as e:
        load_audio(data, ext)
    assert e.value.reason == "bad_audio"


def test_8bit_wav_is_bad_sample():
    with pytest.raises(BadSample, match="16-bit"):
        load_audio(wav_bytes(np.full((100, 1), 128), 16000, width=1), "wav")


def test_flac_without_soundfile_says_what_to_install():
    if importlib.util.find_spec("soundfile") is not None:
        pytest.skip("soundfile is installed")
    with pytest.raises(RuntimeError, match="soundfile"):
        load_audio(b"fLaC", "flac")


def test_resample_length_and_shape():
    sr_from, sr_to = 8000, 16000
    t = torch.arange(8000) / sr_from
    out = resample(torch.sin(2 * math.pi * 100 * t), sr_from, sr_to)
    assert out.shape == (16000,)
    t2 = (torch.arange(16000) + 0.5) / sr_to - 0.5 / sr_from  # half-pixel-centred sample times
    assert torch.allclose(out[100:-100], torch.sin(2 * math.pi * 100 * t2)[100:-100], atol=1e-3)
