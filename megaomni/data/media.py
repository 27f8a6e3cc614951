"""Decoding media bytes into encoder inputs: image patches and log-mel features, all in torch."""

from __future__ import annotations

import io
import math
import struct
import wave

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from megaomni.data import dali_decode
from megaomni.data.errors import BadSample
from megaomni.models.media_layout import patch_positions

# ----------------------------------------------------------------------------- images


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


def decode_image(data: bytes, mode: str, decoder: str = "auto") -> Image.Image:
    """Image bytes -> the fully decoded image in ``mode`` ("RGB" or "L"), the same pixels
    whichever of DALI and Pillow decodes (see :mod:`megaomni.data.dali_decode`)."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: both paths share its checks
        if use_dali(decoder) and dali_decode.handles(image.format, data):
            # None: DALI cannot decode it. It is stricter in places (a PNG without IEND), so Pillow
            # decides below and bad images fail with Pillow's reason and message on both paths.
            if (pixels := dali_decode.decode_rgb(data)) is not None:
                rgb = Image.fromarray(pixels, "RGB")
                return rgb if mode == "RGB" else rgb.convert(mode)  # Pillow's RGB -> L weights
        return image.convert(mode)  # forces the full decode: truncation shows here
    except UnidentifiedImageError as e:  # its message names a BytesIO object, of no use in a log
        raise BadSample("bad_image", "undecodable image (not a format Pillow knows)") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample("bad_image", f"undecodable image ({e})") from e


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


# ----------------------------------------------------------------------------- audio


def _load_wav(data: bytes) -> tuple[np.ndarray, int]:
    try:
        with wave.open(io.BytesIO(data)) as f:
            width, channels, rate, count = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
            frames = f.readframes(count)
    except RuntimeError as e:  # what wave raises for a chunk that claims more bytes than the file has
        raise wave.Error("a chunk overruns the file") from e
    if width != 2:
        raise BadSample("bad_audio", f"WAV with {8 * width}-bit samples (need 16-bit PCM)")
    if rate <= 0:
        raise BadSample("bad_audio", f"WAV with a sample rate of {rate} Hz")
    if len(frames) != count * channels * width:  # a short clip would be silently wrong, not bad
        raise BadSample("bad_audio", f"truncated WAV data: {len(frames) // (channels * width)} of {count} frames")
    samples = np.frombuffer(frames, dtype="<i2")
    return samples.reshape(-1, channels).astype(np.float32).mean(axis=1) / 32768.0, rate


def _load_flac(data: bytes) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as e:  # the setup's fault, not the sample's: stop, do not skip every clip
        raise RuntimeError("reading FLAC audio needs the soundfile package (pip install soundfile), "
                           "or convert the shards' audio to 16-bit WAV") from e
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except RuntimeError as e:  # libsndfile's errors (soundfile.LibsndfileError is one)
        raise BadSample("bad_audio", f"undecodable .flac ({e})") from e
    if rate <= 0:
        raise BadSample("bad_audio", f"FLAC with a sample rate of {rate} Hz")
    return samples.mean(axis=1), rate


def load_audio(data: bytes, ext: str) -> tuple[torch.Tensor, int]:
    """WAV (16-bit PCM) or FLAC bytes -> (mono float32 waveform in [-1, 1], sample rate)."""
    readers = {"wav": _load_wav, "flac": _load_flac}
    if ext not in readers:
        raise BadSample("bad_audio", f"unsupported audio type .{ext} (valid: wav, flac)")
    try:
        samples, rate = readers[ext](data)
    except (wave.Error, EOFError, ValueError, struct.error) as e:
        raise BadSample("bad_audio", f"undecodable .{ext} ({e})") from e
    if samples.size == 0:
        raise BadSample("bad_audio", "empty audio clip")
    return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), rate


def resample(waveform: torch.Tensor, sr_from: int, sr_to: int) -> torch.Tensor:
    """Linear-interpolation resampling (no anti-alias filter: adequate for speech-band audio)."""
    if sr_from == sr_to:
        return waveform
    length = max(1, round(waveform.numel() * sr_to / sr_from))
    return F.interpolate(waveform[None, None], size=length, mode="linear", align_corners=False)[0, 0]


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist, unnormalised:
    ``[n_freqs, n_mels]`` (as torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    mel_points = torch.linspace(0.0, mel_max, n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def log_mel(waveform: torch.Tensor, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> torch.Tensor:
    """Whisper-style log-mel features ``[1 + len // hop_length, n_mels]``: Hann-window STFT
    (centred, reflect padded), power spectrum, HTK mel filters, log10, dynamic range cut to 8
    decades below the clip's peak, then scaled by ``(x + 4) / 4`` to roughly [-1, 1]."""
    if waveform.numel() <= n_fft // 2:
        raise BadSample("bad_audio", f"clip of {waveform.numel()} samples is shorter than half a window ({n_fft})")
    spec = torch.stft(waveform.float(), n_fft, hop_length=hop_length, window=torch.hann_window(n_fft),
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs() ** 2  # [n_freqs, frames]
    mel = power.T @ mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0
