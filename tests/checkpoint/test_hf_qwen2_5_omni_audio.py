"""Qwen2.5-Omni's audio tower as megaomni's audio encoder options (model.audio.chunk_frames with
Qwen2-Audio's Whisper options): a tiny random ``Qwen2_5OmniAudioEncoder`` built from a config (no
download) and megaomni's encoder with its weights give the same features (fp32, 1e-5) on clips of
several chunks, a last partial one, and a chunk-less short one, inside Whisper-style windows."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf import qwen2_audio  # noqa: E402
from megaomni.checkpoint.hf.mapping import expand, to_ours  # noqa: E402
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.media.modality import MediaBatch  # noqa: E402

MELS, WINDOW, N_WINDOW = 16, 120, 10  # chunks of 2 * n_window frames


def test_chunked_audio_encoder_gives_hugging_face_features(megatron_cpu):
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniAudioEncoder

    from megaomni.models.build import build_model

    config = transformers.Qwen2_5OmniAudioEncoderConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=MELS,
        output_dim=64, n_window=N_WINDOW, max_source_positions=WINDOW // 2)
    torch.manual_seed(0)
    hf = Qwen2_5OmniAudioEncoder(config).float().eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_post" in name:
                param.add_(0.1 * torch.randn_like(param))

    cfg = OmniConfig()
    cfg.model.vision.enabled = False
    audio = cfg.model.audio
    for field, value in dict(qwen2_audio.audio_fields(config.to_dict()), chunk_frames=2 * N_WINDOW).items():
        setattr(audio, field, value)
    model = build_model(cfg, 256, lambda name: 255).eval()
    rules = expand(qwen2_audio.tower_rules(audio, "audio_tower.ln_post", "audio_tower.proj"), {"a": audio.num_layers})
    theirs = {"audio_tower." + k: v for k, v in hf.state_dict().items() if "audio_bos_eos_token" not in k}
    state = {k[len("audio_encoder."):]: v for k, v in to_ours(rules, theirs).items()}
    model.audio_encoder.load_state_dict({**state, "position_embedding": model.audio_encoder.position_embedding})

    g = torch.Generator().manual_seed(1)
    valid = [57, 40, 13]  # 3 chunks (the last partial), exactly 2, and less than one
    windows = [torch.randn(WINDOW, MELS, generator=g) for _ in valid]
    with torch.no_grad():
        want = hf(torch.cat([w[:n] for w, n in zip(windows, valid)]).T, torch.tensor(valid)).last_hidden_state
        media = MediaBatch(torch.cat(windows), torch.tensor([[WINDOW]] * len(valid)),
                           {"valid_frames": torch.tensor(valid)}, (WINDOW,) * len(valid), ())
        got = model.audio_encoder(media)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-5, (got - want).abs().max()
