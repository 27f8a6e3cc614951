"""Audio clips, through the audio encoder: log-mel frames, ``model.audio.downsample`` of them per
LLM token (the encoder's stem strides by ``model.audio.stem_stride``, its projector merges the rest).

``model.audio.features=whisper``: every clip is Whisper's whole padded window, the item's rows the
window's (the stem runs on all of it), and ``info["valid_frames"]`` the clip's own frames (see
megaomni.media.audio_encoder)."""

from __future__ import annotations

from megaomni.checks import require, require_choice, require_heads, require_positive, require_stack
from megaomni.config import AudioConfig
from megaomni.errors import BadSample
from megaomni.media.modality import (
    EncoderFlops,
    ImportedOnUse,
    MediaItem,
    Modality,
    Source,
)
from megaomni.media.sounds import (
    WHISPER_SECONDS,
    clip_length,
    load_audio,
    log_mel,
    log_mel_frames,
    resample,
    resampled_length,
    whisper_frames,
    whisper_valid_frames,
)

AUDIO = "<audio>"  # the placeholder as written in conversation text
AUDIO_EXTS = ("wav", "flac")
FEATURES = ("megaomni", "whisper")  # model.audio.features


def audio_tokens(frames: int, downsample: int) -> int:
    """LLM tokens a clip of ``frames`` log-mel frames turns into (frames are padded up)."""
    return -(-frames // downsample)


def clip_tokens(frames: int, audio: AudioConfig) -> int:
    """LLM tokens of a clip of ``frames`` (its own, not its window's) under ``model.audio``: the
    pooling projector drops a last incomplete group of rows, as Qwen2-Audio does."""
    if audio.projector == "pool_linear":
        return -(-frames // audio.stem_stride) // (audio.downsample // audio.stem_stride)
    return audio_tokens(frames, audio.downsample)


class Audio(Modality):
    name = "audio"
    pad = "<|audio_pad|>"
    section = AudioConfig
    budget, rows_name = "max_audio_frames", "audio frames"
    encoder = ImportedOnUse("megaomni.media.audio_encoder:AudioEncoder")
    sources = (Source(AUDIO, AUDIO_EXTS, "audio", unread_exts=("mp3", "ogg", "opus", "m4a", "aac", "wma")),)

    def _item(self, samples: int, cfg, values=None) -> MediaItem:
        """The item of a clip of ``samples`` samples at ``model.audio.sample_rate``."""
        audio = cfg.model.audio
        if audio.features == "whisper":
            window = whisper_frames(audio.sample_rate, audio.hop_length)
            valid = whisper_valid_frames(samples, audio.sample_rate, audio.hop_length)
            return MediaItem((window,), window, clip_tokens(valid, audio),
                             {"valid_frames": valid}, values)
        frames = log_mel_frames(samples, audio.hop_length)
        return MediaItem((frames,), frames, clip_tokens(frames, audio), {}, values)

    def _check_seconds(self, samples: int, cfg) -> None:
        seconds = samples / cfg.model.audio.sample_rate
        if seconds > cfg.data.max_audio_seconds:
            raise BadSample("audio_too_long",
                            f"{seconds:.2f} s clip > data.max_audio_seconds={cfg.data.max_audio_seconds}")

    def decode(self, source, members, cfg):
        audio, items = cfg.model.audio, []
        for ext, data in members:
            waveform, rate = load_audio(data, ext)
            waveform = resample(waveform, rate, audio.sample_rate)
            self._check_seconds(waveform.numel(), cfg)
            features = log_mel(waveform, sample_rate=audio.sample_rate, n_fft=audio.n_fft, hop_length=audio.hop_length,
                               n_mels=audio.n_mels, whisper=audio.features == "whisper")
            items.append([self._item(waveform.numel(), cfg, features)])
        return items

    def measure(self, source, members, cfg):
        audio, items = cfg.model.audio, []
        for ext, data in members:
            samples, rate = clip_length(data, ext)
            if rate <= 0:
                raise BadSample("bad_audio", f"a sample rate of {rate} Hz")
            samples = resampled_length(samples, rate, audio.sample_rate)
            self._check_seconds(samples, cfg)
            items.append([self._item(samples, cfg)])
        return items

    def flops(self, section, llm_hidden):
        # pool_linear: one Linear per group of downsample / stem_stride rows.
        pooled = section.hidden_size * llm_hidden * section.stem_stride / section.downsample
        return EncoderFlops.transformer(section, llm_hidden, rows_per_input=1 / section.stem_stride,
                                        projector_params=pooled if section.projector == "pool_linear" else None)

    def check(self, cfg):
        audio, data = cfg.model.audio, cfg.data
        require_positive("model.audio", audio, ("num_layers", "hidden_size", "num_attention_heads",
                                                "ffn_hidden_size", "n_mels", "sample_rate", "n_fft", "hop_length"))
        require_choice("model.audio.position_embedding", audio.position_embedding, ("rope", "sinusoidal"))
        require_choice("model.audio.projector", audio.projector, ("mlp", "pool_linear"))
        rope = audio.position_embedding == "rope"
        require_heads("model.audio", audio.hidden_size, audio.num_attention_heads, 2 if rope else 1)
        if not rope:
            require_positive("model.audio", audio, ("max_positions",))
            require(audio.hidden_size % 2 == 0 and audio.hidden_size >= 4,
                    f"model.audio.hidden_size={audio.hidden_size}: a sinusoidal position table needs an even "
                    "width of at least 4")
        require_stack("model.audio", audio)
        require(audio.stem_stride >= 1, f"model.audio.stem_stride={audio.stem_stride}: must be a positive integer")
        require(audio.downsample >= audio.stem_stride and audio.downsample % audio.stem_stride == 0,
                f"model.audio.downsample={audio.downsample}: must be a multiple of model.audio.stem_stride="
                f"{audio.stem_stride} (the stem strides, the projector merges the rest)")
        require(audio.features in FEATURES,
                f"model.audio.features={audio.features}: must be one of {', '.join(FEATURES)}")
        if audio.features == "whisper":
            require(data.max_audio_seconds <= WHISPER_SECONDS, f"data.max_audio_seconds={data.max_audio_seconds}: "
                    f"must be at most Whisper's {WHISPER_SECONDS} s window (model.audio.features=whisper)")
            window = whisper_frames(audio.sample_rate, audio.hop_length)
            require(data.max_audio_frames == 0 or data.max_audio_frames >= window,
                    f"data.max_audio_frames={data.max_audio_frames}: must hold one Whisper window, {window} "
                    "frames (or 0: no limit)")


AUDIO_MODALITY = Audio()
