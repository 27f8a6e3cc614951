"""Audio as the audio encoder takes it: WAV / FLAC bytes -> a mono waveform -> Whisper-style
log-mel features, all in torch."""

from __future__ import annotations

import io
import math
import struct
import wave

import numpy as np
import torch
import torch.nn.functional as F

from megaomni.errors import BadSample

# Whisper's window: its encoder has positions for 30 s of frames, so every clip is padded to it.
WHISPER_SECONDS = 30


def read_wav(data: bytes) -> tuple[int, int, int, bytes]:
    """(sample width in bytes, channels, sample rate, the frames' bytes) of WAV bytes; a malformed
    header, a rate of 0 or frames fewer than the header says are ``bad_audio``."""
    try:
        with wave.open(io.BytesIO(data)) as f:
            width, channels, rate, count = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
            frames = f.readframes(count)
    except RuntimeError as e:  # what wave raises, with no message, for a chunk that claims more bytes than the file has
        raise BadSample("bad_audio", "undecodable .wav (a chunk overruns the file)") from e
    except (wave.Error, EOFError, ValueError, struct.error) as e:
        raise BadSample("bad_audio", f"undecodable .wav ({str(e) or 'its header ends early'})") from e
    if rate <= 0:
        raise BadSample("bad_audio", f"WAV with a sample rate of {rate} Hz")
    if len(frames) != count * channels * width:  # a short clip would be silently wrong, not bad
        raise BadSample("bad_audio", f"truncated WAV data: {len(frames) // (channels * width)} of {count} frames")
    return width, channels, rate, frames


def _load_wav(data: bytes) -> tuple[np.ndarray, int]:
    width, channels, rate, frames = read_wav(data)
    if width != 2:
        raise BadSample("bad_audio", f"WAV with {8 * width}-bit samples (need 16-bit PCM)")
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


def resampled_length(samples: int, sr_from: int, sr_to: int) -> int:
    return samples if sr_from == sr_to else max(1, round(samples * sr_to / sr_from))


def resample(waveform: torch.Tensor, sr_from: int, sr_to: int) -> torch.Tensor:
    """Linear-interpolation resampling (no anti-alias filter: adequate for speech-band audio)."""
    if sr_from == sr_to:
        return waveform
    length = resampled_length(waveform.numel(), sr_from, sr_to)
    return F.interpolate(waveform[None, None], size=length, mode="linear", align_corners=False)[0, 0]


def _slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (librosa's default, Whisper's): linear to 1 kHz, logarithmic above."""
    return torch.where(hz < 1000.0, 3.0 * hz / 200.0, 15.0 + torch.log(hz / 1000.0) * (27.0 / math.log(6.4)))


def _slaney_hz(mel: torch.Tensor) -> torch.Tensor:
    return torch.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * torch.exp(math.log(6.4) / 27.0 * (mel - 15.0)))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, slaney: bool = False) -> torch.Tensor:
    """Triangular filters on the HTK mel scale from 0 Hz to Nyquist, unnormalised:
    ``[n_freqs, n_mels]`` (as torchaudio's ``melscale_fbanks(norm=None, mel_scale="htk")``).
    ``slaney``: Whisper's instead, on Slaney's scale from 0 to 8 kHz whatever the rate, each
    triangle scaled to unit area (librosa's and HF's ``norm="slaney"``)."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    if slaney:
        top = _slaney_mel(torch.tensor(8000.0, dtype=torch.float64))
        hz_points = _slaney_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    else:
        mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
        mel_points = torch.linspace(0.0, mel_max, n_mels + 2, dtype=torch.float64)
        hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    widths = hz_points[1:] - hz_points[:-1]
    slopes = hz_points[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    bank = torch.clamp(torch.minimum(down, up), min=0.0)
    if slaney:
        bank = bank * (2.0 / (hz_points[2:] - hz_points[:-2]))
    return bank.float()


def log_mel(waveform: torch.Tensor, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
            whisper: bool = False) -> torch.Tensor:
    """Whisper-style log-mel features ``[1 + len // hop_length, n_mels]``: Hann-window STFT
    (centred, reflect padded), power spectrum, HTK mel filters, log10, dynamic range cut to 8
    decades below the clip's peak, then scaled by ``(x + 4) / 4`` to roughly [-1, 1].

    ``whisper``: WhisperFeatureExtractor's features exactly, ``[whisper_frames, n_mels]``: the
    clip zero-padded to Whisper's window first (the peak is the window's; a longer clip is cut,
    as HF truncates), Slaney filters, and the STFT's last frame dropped."""
    if whisper:
        waveform = F.pad(waveform, (0, WHISPER_SECONDS * sample_rate - waveform.numel()))
    if waveform.numel() <= n_fft // 2:
        raise BadSample("bad_audio", f"clip of {waveform.numel()} samples is shorter than half a window ({n_fft})")
    spec = torch.stft(waveform.float(), n_fft, hop_length=hop_length, window=torch.hann_window(n_fft),
                      center=True, pad_mode="reflect", return_complex=True)
    if whisper:
        spec = spec[:, :-1]
    power = spec.abs() ** 2  # [n_freqs, frames]
    mel = power.T @ mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, slaney=whisper)
    logs = torch.clamp(mel, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


def clip_length(data: bytes, ext: str) -> tuple[int, int]:
    """(samples, sample rate) of a clip, from its header alone (no decode)."""
    try:
        if ext == "wav":
            with wave.open(io.BytesIO(data)) as f:
                return f.getnframes(), f.getframerate()
        if ext == "flac":
            import soundfile
            info = soundfile.info(io.BytesIO(data))
            return info.frames, info.samplerate
    except (wave.Error, EOFError, ValueError, struct.error, RuntimeError) as e:
        raise BadSample("bad_audio", f"undecodable .{ext} ({e})") from e
    raise BadSample("bad_audio", f"unsupported audio type .{ext} (valid: wav, flac)")


def log_mel_frames(samples: int, hop_length: int) -> int:
    """Frames :func:`log_mel` makes of ``samples`` samples (a centred STFT)."""
    return 1 + samples // hop_length


def whisper_frames(sample_rate: int, hop_length: int) -> int:
    """Frames of Whisper's window, which ``log_mel(whisper=True)`` makes of any clip (3000 at 16 kHz)."""
    return WHISPER_SECONDS * sample_rate // hop_length


def whisper_valid_frames(samples: int, sample_rate: int, hop_length: int) -> int:
    """Frames of Whisper's window that hold a clip of ``samples`` samples: the sum of
    WhisperFeatureExtractor's attention mask (a frame per hop begun inside the clip)."""
    return min(-(-samples // hop_length), whisper_frames(sample_rate, hop_length))
