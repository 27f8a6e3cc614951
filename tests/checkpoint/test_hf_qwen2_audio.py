"""Qwen2-Audio in and out: a tiny random ``Qwen2AudioForConditionalGeneration`` built from a config
(no download), imported into megaomni, gives the Hugging Face model's logits (fp32, 1e-4) on text
and two clips (1.31 s and 2.7 s of frames) in padded windows as Hugging Face takes them; exported
back, every tensor is bit-exact and ``from_pretrained`` loads it."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf import qwen2_audio  # noqa: E402
from megaomni.checkpoint.hf.convert import (  # noqa: E402
    import_hf,
    load_state,
    model_config,
)
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.media.audio import AUDIO_MODALITY, clip_tokens  # noqa: E402
from megaomni.media.modality import MediaItem  # noqa: E402
from tests.checkpoint.round_trip import export_and_reload, save_perturbed  # noqa: E402

VOCAB, AUDIO, MELS = 256, 250, 16
POSITIONS = 150  # max_source_positions: Hugging Face takes windows of 2 * 150 frames (3 s; Whisper's: 30 s)
WINDOW = 2 * POSITIONS
CLIPS = (131, 270)  # frames (10 ms each): odd and even, so that the stem's last rows read the padding


def hf_model(folder) -> torch.nn.Module:
    config = transformers.Qwen2AudioConfig(
        text_config=dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=64, intermediate_size=176,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512),
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=MELS, max_source_positions=POSITIONS),
        audio_token_id=AUDIO)
    torch.manual_seed(0)
    model = transformers.Qwen2AudioForConditionalGeneration(config).float().eval()
    save_perturbed(model, folder, ("norm",))
    return model


def inputs(audio_cfg):
    """Token ids (text, clip, text, clip, text), the windows ``[clips, mels, WINDOW]`` (random
    values in the padding too: the stem reads them) and Hugging Face's feature mask."""
    g = torch.Generator().manual_seed(1)
    ids = []
    for frames in CLIPS:
        ids += torch.randint(0, 200, (5,), generator=g).tolist() + [AUDIO] * clip_tokens(frames, audio_cfg)
    ids += torch.randint(0, 200, (6,), generator=g).tolist()
    windows = torch.randn(len(CLIPS), MELS, WINDOW, generator=g)
    mask = (torch.arange(WINDOW)[None, :] < torch.tensor(CLIPS)[:, None]).long()
    return torch.tensor([ids]), windows, mask


def clips(windows, audio_cfg, kept: int = WINDOW):
    """megaomni's batch of the clips in their windows ``[frames, mels]``, each window cut to
    ``kept`` frames after the clip's own (the whole window by default)."""
    items = [MediaItem((n,), n, clip_tokens(frames, audio_cfg), {"valid_frames": frames}, w.T[:n].contiguous())
             for w, frames in zip(windows, CLIPS) for n in [min(WINDOW, frames + kept)]]
    return {"audio": AUDIO_MODALITY.collate(items)}


def test_qwen2_audio_import_gives_hugging_face_logits_and_export_is_exact(megatron_cpu, tmp_path):
    from megaomni.models.build import build_model

    hf = hf_model(tmp_path / "hf")
    imported = import_hf(str(tmp_path / "hf"))
    sections, state = imported.sections, imported.state
    assert sections["audio"]["features"] == "whisper"  # its processor's: a WhisperFeatureExtractor
    cfg = OmniConfig(model=model_config(sections))
    model = build_model(cfg, VOCAB, lambda name: AUDIO)
    load_state(model, state)
    model.eval()
    assert "audio_encoder.position_embedding" not in dict(model.named_parameters())  # Whisper's: not trained

    tokens, windows, mask = inputs(cfg.model.audio)
    lengths = hf.model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))[1]
    assert lengths.tolist() == [clip_tokens(n, cfg.model.audio) for n in CLIPS]
    with torch.no_grad():
        want = hf(input_ids=tokens, input_features=windows, feature_attention_mask=mask).logits
        features = model.audio_encoder(clips(windows, cfg.model.audio)["audio"])
        # The stem's last rows read 2 frames past a clip: a window cut there gives the same
        # features; cut at the clip, not (the padding matters).
        assert torch.equal(model.audio_encoder(clips(windows, cfg.model.audio, kept=2)["audio"]), features)
        assert not torch.allclose(model.audio_encoder(clips(windows, cfg.model.audio, kept=0)["audio"]), features)
        hidden = model.embed(tokens, clips(windows, cfg.model.audio))
        positions = torch.arange(tokens.shape[1]).expand(3, 1, -1)  # plain RoPE
        got = model.llm(input_ids=tokens, position_ids=positions, attention_mask=None, decoder_input=hidden)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()

    other, architecture = copy.deepcopy(cfg.model), imported.architecture
    other.audio.features = "megaomni"  # processing, not architecture: the same export
    assert qwen2_audio.hf_config(other, architecture) == qwen2_audio.hf_config(cfg.model, architecture)
    reloaded = export_and_reload(cfg.model, model, imported, tmp_path, type(hf))
    with torch.no_grad():  # the same model: config.json says what the original's does
        assert torch.equal(reloaded(input_ids=tokens, input_features=windows, feature_attention_mask=mask).logits,
                           want)


def test_sinusoidal_table_is_whispers():
    """A model built without a checkpoint starts from Whisper's table (Hugging Face's
    Qwen2-Audio starts from random values: its checkpoints hold the table)."""
    from transformers.models.whisper.modeling_whisper import sinusoids

    from megaomni.layers.rotary import whisper_sinusoids

    assert torch.equal(whisper_sinusoids(POSITIONS, 32), sinusoids(POSITIONS, 32))
