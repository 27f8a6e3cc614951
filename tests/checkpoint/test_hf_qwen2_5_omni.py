"""Qwen2.5-Omni's thinker in and out: a tiny random ``Qwen2_5OmniThinkerForConditionalGeneration``
built from a config (no download), imported into megaomni, gives the Hugging Face model's logits
(fp32, 1e-4) on samples megaomni's data path makes with a Qwen2.5-Omni tokenizer: text, an image,
a video and a clip; and text, an image, a video with its audio track interleaved by time
(``data.audio_in_video``) and a clip. Their ids are the processor's layout, their multimodal RoPE
positions ``get_rope_index``'s; exported back, every tensor is bit-exact and ``from_pretrained``
gives the same logits."""

from __future__ import annotations

import copy
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import import_hf, load_state, model_config  # noqa: E402
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.data.positions import mrope_positions  # noqa: E402
from megaomni.data.sample import build_sample  # noqa: E402
from megaomni.data.tokenizer import load_tokenizer  # noqa: E402
from megaomni.media import registry  # noqa: E402
from megaomni.media.modality import MediaItem  # noqa: E402
from tests.checkpoint.round_trip import export_and_reload, save_perturbed  # noqa: E402
from tests.data.helpers import conversation, raw  # noqa: E402
from tests.data.hf_tokenizers import qwen2_5_omni  # noqa: E402
from tests.data.test_hf_processors import random_png  # noqa: E402
from tests.data.test_media import wav_bytes  # noqa: E402
from tests.media_views import raw_members  # noqa: E402

VOCAB, MELS, N_WINDOW, MERGE, T, FPS = 448, 16, 10, 2, 2, 2.0
# 5 positions a second, chunks of 1 s: a video's groups (1 s each at 2 fps) 5 positions apart, one
# per chunk; a clip's tokens (25 a second) 5 to a chunk.
PER_SECOND, CHUNK_SECONDS = 5, 1
TOKENS = dict(audio_token_index="<|AUDIO|>", image_token_index="<|IMAGE|>", video_token_index="<|VIDEO|>",
              audio_start_token_id="<|audio_bos|>", audio_end_token_id="<|audio_eos|>",
              vision_start_token_id="<|vision_bos|>", vision_end_token_id="<|vision_eos|>")


def hf_model(folder, tokenizer, initializer_range: float = 0.02) -> torch.nn.Module:
    """The tiny thinker, saved in ``folder``: ``tokenizer``'s media ids, weights drawn with std
    ``initializer_range`` (the thinker's default; larger: media that move the logits more)."""
    init = dict(initializer_range=initializer_range)
    config = transformers.Qwen2_5OmniThinkerConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0),
                         **init),
        vision_config=dict(depth=4, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=4,
                           spatial_merge_size=MERGE, temporal_patch_size=T, window_size=112,
                           fullatt_block_indexes=[1, 3], **init),
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=MELS, output_dim=64, n_window=N_WINDOW, max_source_positions=60, **init),
        position_id_per_seconds=PER_SECOND, seconds_per_chunk=CHUNK_SECONDS, **init,
        **{field: tokenizer.token_id(token) for field, token in TOKENS.items()})
    torch.manual_seed(0)
    model = transformers.Qwen2_5OmniThinkerForConditionalGeneration(config).float().eval()
    save_perturbed(model, folder, ("norm", "ln_q", "ln_post"))
    return model


@pytest.fixture(scope="module")
def omni(megatron_cpu, tmp_path_factory):
    from megaomni.models.build import build_model

    root = tmp_path_factory.mktemp("omni")
    tokenizer = load_tokenizer(qwen2_5_omni(str(root / "tokenizer")))
    hf = hf_model(root / "hf", tokenizer)
    imported = import_hf(str(root / "hf"))
    cfg = OmniConfig(model=model_config(imported.sections))
    cfg.data.seq_length = 512
    model = build_model(cfg, VOCAB, tokenizer.media_pad_ids)
    load_state(model, imported.state)
    return SimpleNamespace(tokenizer=tokenizer, hf=hf, imported=imported, cfg=cfg, model=model.eval(), root=root)


def clip(seconds: float, seed: int) -> bytes:
    samples = np.random.default_rng(seed).integers(-20000, 20000, (int(16000 * seconds), 1))
    return wav_bytes(samples, 16000)


def sample(omni, content: str, clips: list[float], interleaved: bool = False):
    """A sample of ``content``: an image of 6x10 patches, a video of 4 frames of 4x16 (2 groups,
    1 s each) and ``clips`` (seconds), as megaomni's data path makes it (``data.audio_in_video``:
    ``interleaved``)."""
    cfg = copy.deepcopy(omni.cfg)
    cfg.data.audio_in_video = interleaved
    frames = [random_png(224, 56, seed)[0] for seed in (2, 3, 4, 5)]
    record = raw(conversation(("user", content), ("assistant", "a red circle")), images=[random_png(140, 84)[0]],
                 audios=[clip(s, seed) for seed, s in enumerate(clips)])
    record.members.update(raw_members(video=frames))
    return build_sample(record, omni.tokenizer, cfg)


def hf_inputs(sample, interleaved: bool) -> dict:
    """The Hugging Face thinker's inputs of ``sample`` (its image first, then its video)."""
    image, video = sample.media["vision"][:1], sample.media["vision"][1:]
    clips = sample.media["audio"]
    valid = torch.tensor([item.info["valid_frames"] for item in clips])
    return dict(input_ids=sample.tokens[None], attention_mask=torch.ones_like(sample.tokens)[None],
                pixel_values=image[0].values, image_grid_thw=torch.tensor([[1, *image[0].size]]),
                pixel_values_videos=torch.cat([item.values for item in video]),
                video_grid_thw=torch.tensor([[len(video), *video[0].size]]),
                video_second_per_grid=torch.tensor([T / FPS]),
                input_features=torch.stack([item.values.T for item in clips]),
                feature_attention_mask=(torch.arange(clips[0].rows)[None] < valid[:, None]).long(),
                use_audio_in_video=interleaved)


def ours(omni, sample) -> torch.Tensor:
    media = {name: registry.get(name).collate(items) for name, items in sample.media.items()}
    tokens = sample.tokens[None]
    with torch.no_grad():
        hidden = omni.model.embed(tokens, media)
        return omni.model.llm(input_ids=tokens, position_ids=sample.positions[:, None], attention_mask=None,
                              decoder_input=hidden)


def processor_layout(video, audio_tokens: int) -> str:
    """Qwen2.5-Omni's processor's text for a video with its track (its own method, on the fields it reads)."""
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor as Processor

    fields = SimpleNamespace(audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>", video_token="<|VIDEO|>",
                             audio_token="<|AUDIO|>", video_processor=SimpleNamespace(merge_size=MERGE))
    fields.get_chunked_index = partial(Processor.get_chunked_index, fields)
    grid = {"video_grid_thw": [[len(video), *video[0].size]], "video_second_per_grid": [T / FPS]}
    return Processor.replace_video_with_audio_token(fields, grid, 0, {"num_audio_tokens": [audio_tokens]}, 0,
                                                    position_id_per_seconds=PER_SECOND, seconds_per_chunk=CHUNK_SECONDS)


@pytest.mark.parametrize("interleaved", [False, True])
def test_qwen2_5_omni_import_gives_hugging_face_logits_and_positions(omni, interleaved):
    if interleaved:  # the video's track (0.28 s: 7 tokens, the last 2 in a second chunk), then a clip alone
        got = sample(omni, "What is shown? <image> And here <video><audio>, then <audio>?", [0.28, 0.5], True)
    else:
        got = sample(omni, "What is shown? <image> And here <video>, then <audio>?", [0.5])
    inputs = hf_inputs(got, interleaved)
    hf = omni.hf
    with torch.no_grad():
        want = hf(**inputs).logits
        positions, _ = hf.model.get_rope_index(
            inputs["input_ids"], inputs["image_grid_thw"], inputs["video_grid_thw"], inputs["attention_mask"],
            interleaved, inputs["feature_attention_mask"].sum(-1), inputs["video_second_per_grid"])
    assert torch.equal(got.positions, positions[:, 0])
    logits = ours(omni, got)
    assert logits.shape == want.shape
    assert (logits - want).abs().max() < 1e-4, (logits - want).abs().max()

    ids, tok = got.tokens.tolist(), omni.tokenizer
    start = [i for i, t in enumerate(ids) if t == tok.token_id("<|vision_bos|>")][1]  # the video's (the image's first)
    end = ids.index(tok.token_id("<|vision_eos|>"), start)
    if interleaved:
        video, track = got.media["vision"][1:], got.media["audio"][0]
        assert track.tokens == 7 and ids[start + 1:end] == tok.encode(processor_layout(video, track.tokens))
        # Both ends one past the last chunk (the clip's 2 last tokens), not past the video's widest column.
        span = got.positions[:, start:end + 1]
        assert span[:, -2:].unique().tolist() == [span[:, -4:-2].max() + 1] and span[0, -1] <= span[:, :-2].max()
    else:
        assert set(ids[start + 1:end]) == {tok.token_id("<|VIDEO|>")}


def test_seconds_first_is_qwen2_5_omnis_rounding(omni):
    """At 25 fps and 25 positions a second a video's temporal positions are Hugging Face's with
    model.vision.seconds_first, and not with Qwen2.5-VL's order of the products."""
    cfg, tok = OmniConfig(), omni.tokenizer
    cfg.model.vision.merge_size, cfg.model.vision.temporal_patch_size, cfg.data.video_fps = MERGE, T, 25.0
    cfg.model.vision.tokens_per_second = 25
    items = [MediaItem((2, 2), 4, 1, {"time": t}, None) for t in range(12)]
    tokens = torch.tensor([[tok.token_id("<|vision_bos|>"), *[tok.token_id("<|VIDEO|>")] * 12,
                            tok.token_id("<|vision_eos|>")]])
    hf = omni.hf
    hf.config.position_id_per_seconds = 25
    try:
        want, _ = hf.model.get_rope_index(tokens, None, torch.tensor([[12, 2, 2]]), torch.ones_like(tokens),
                                          second_per_grids=torch.tensor([T / 25.0]))
    finally:
        hf.config.position_id_per_seconds = PER_SECOND
    runs = [("vision", 1, 13, items)]
    assert not torch.equal(mrope_positions(14, runs, cfg), want[:, 0])
    cfg.model.vision.seconds_first = True
    assert torch.equal(mrope_positions(14, runs, cfg), want[:, 0])


def test_qwen2_5_omni_export_is_exact(omni, tmp_path):
    (tmp_path / "hf").symlink_to(omni.root / "hf")
    reloaded = export_and_reload(omni.cfg.model, omni.model, omni.imported, tmp_path, type(omni.hf))
    config = reloaded.config
    assert (config.position_id_per_seconds, config.seconds_per_chunk, config.audio_config.n_window) == (5, 1, 10)
    got = sample(omni, "<image> <video> <audio>", [0.5])
    inputs = hf_inputs(got, False)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, omni.hf(**inputs).logits)
