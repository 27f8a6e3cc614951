"""Audio clips, through the audio encoder: log-mel frames, ``model.audio.downsample`` of them per
LLM token (the encoder's stem strides by ``model.audio.stem_stride``, its projector merges the rest).
A clip may sit at the start of a window of padding frames (Whisper's 30 s): the item's rows are
the window's, ``info["valid_frames"]`` the clip's own (see megaomni.media.audio_encoder)."""

from __future__ import annotations

from megaomni.checks import require, require_choice, require_heads, require_positive, require_stack
from megaomni.config import AudioConfig
from megaomni.errors import BadSample
from megaomni.media.modality import EncoderFlops, ImportedOnUse, MediaItem, Modality, Source
from megaomni.media.sounds import clip_length, load_audio, log_mel, log_mel_frames, resample, resampled_length

AUDIO = "<audio>"  # the placeholder as written in conversation text
AUDIO_EXTS = ("wav", "flac")


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

    def _item(self, frames: int, cfg, values=None) -> MediaItem:
        return MediaItem((frames,), frames, clip_tokens(frames, cfg.model.audio), {}, values)

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
            features = log_mel(waveform, sample_rate=audio.sample_rate, n_fft=audio.n_fft,
                               hop_length=audio.hop_length, n_mels=audio.n_mels)
            items.append([self._item(features.shape[0], cfg, features)])
        return items

    def measure(self, source, members, cfg):
        audio, items = cfg.model.audio, []
        for ext, data in members:
            samples, rate = clip_length(data, ext)
            if rate <= 0:
                raise BadSample("bad_audio", f"a sample rate of {rate} Hz")
            samples = resampled_length(samples, rate, audio.sample_rate)
            self._check_seconds(samples, cfg)
            items.append([self._item(log_mel_frames(samples, audio.hop_length), cfg)])
        return items

    def flops(self, section, llm_hidden):
        # pool_linear: one Linear per group of downsample / stem_stride rows.
        pooled = section.hidden_size * llm_hidden * section.stem_stride / section.downsample
        return EncoderFlops.transformer(section, llm_hidden, rows_per_input=1 / section.stem_stride,
                                        projector_params=pooled if section.projector == "pool_linear" else None)

    def check(self, cfg):
        audio = cfg.model.audio
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


AUDIO_MODALITY = Audio()
