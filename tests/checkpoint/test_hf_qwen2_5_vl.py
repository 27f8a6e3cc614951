"""Qwen2.5-VL in and out: a tiny random ``Qwen2_5_VLForConditionalGeneration`` built from a config
(no download), imported into megaomni, gives the Hugging Face model's logits (fp32, 1e-4) on a row
of text, two images of several windows each (partial ones at the right and bottom edges) and a
three-step video whose temporal positions are spaced by time; its multimodal RoPE positions are
Hugging Face's; exported back, every tensor is bit-exact and ``from_pretrained`` loads it."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import (  # noqa: E402
    import_hf,
    load_state,
    model_config,
)
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.data.positions import mrope_positions  # noqa: E402
from megaomni.media.modality import MediaItem  # noqa: E402
from megaomni.media.vision import VISION  # noqa: E402
from tests.checkpoint.round_trip import export_and_reload, save_perturbed  # noqa: E402

# Qwen2-VL's test builder and the token ids / patch sizes it builds with.
from tests.checkpoint.test_hf_qwen2_vl import END, IMAGE, MERGE, PATCH, START, VIDEO, VOCAB, T, inputs  # noqa: E402

# 3 positions per second, a group of T frames at 4 fps half a second: groups at 0, 1.5, 3 -> 0, 1, 3.
TOKENS_PER_SECOND, FPS = 3, 4.0


def hf_model(folder) -> torch.nn.Module:
    config = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)),
        vision_config=dict(depth=4, hidden_size=32, out_hidden_size=64, intermediate_size=48, num_heads=4,
                           patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=T, in_channels=3,
                           window_size=112, fullatt_block_indexes=[1, 3], tokens_per_second=TOKENS_PER_SECOND),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config).float().eval()
    save_perturbed(model, folder, ("norm", "ln_q"))
    return model


# Text, an image of 12x20 patches (6x10 merged tokens, windows of 4x4 of them: 2x3 windows, the
# last row and column partial), a video of 3 steps of 8x4 (one partial window each), an image of
# 10x18 (2x3 windows). The video's temporal extent (positions 0..3) stays within its spatial one
# (4 rows), where transformers 5's rule for the text after it (max(h, w) / merge past its start)
# and Qwen's (one past its largest position) agree.
MEDIA = (("image", [(12, 20)]), ("video", [(8, 4)] * 3), ("image", [(10, 18)]))


def test_qwen2_5_vl_import_gives_hugging_face_logits_and_export_is_exact(megatron_cpu, tmp_path):
    from megaomni.models.build import build_model

    hf = hf_model(tmp_path / "hf")
    imported = import_hf(str(tmp_path / "hf"))
    sections, state = imported.sections, imported.state
    assert sections["vision"]["window_size"] == 112 and sections["vision"]["full_attention_layers"] == [1, 3]
    cfg = OmniConfig(model=model_config(sections))
    cfg.data.video_fps = FPS
    model = build_model(cfg, VOCAB, lambda name: IMAGE)
    load_state(model, state)
    model.eval()

    tokens, types, runs, items, patches = inputs(MEDIA)
    image_items = [0, 4]
    image_grid = torch.tensor([[1, *items[i].size] for i in image_items])
    video_grid = torch.tensor([[3, *items[1].size]])
    seconds = torch.tensor([T / FPS])  # second_per_grid_ts, as Qwen2.5-VL's processor makes it
    with torch.no_grad():
        want = hf(input_ids=tokens, mm_token_type_ids=types, pixel_values=torch.cat([patches[i] for i in image_items]),
                  image_grid_thw=image_grid, pixel_values_videos=torch.cat(patches[1:4]), video_grid_thw=video_grid,
                  second_per_grid_ts=seconds).logits
        hf_positions, _ = hf.model.get_rope_index(tokens, types, image_grid, video_grid, seconds)
    positions = mrope_positions(tokens.shape[1], runs, cfg)
    assert torch.equal(positions, hf_positions[:, 0])
    video_times = positions[0, runs[1][1]:runs[1][2]].unique()
    assert (video_times - video_times[0]).tolist() == [0, 1, 3]

    ours = tokens.clone()
    ours[tokens == VIDEO] = IMAGE  # megaomni's vision pad stands for both (the features replace it)
    media = {"vision": VISION.collate([MediaItem(i.size, i.rows, i.tokens, i.info, p) for i, p in zip(items, patches)])}
    with torch.no_grad():
        hidden = model.embed(ours, media)
        got = model.llm(input_ids=ours, position_ids=positions[:, None], attention_mask=None, decoder_input=hidden)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()

    reloaded = export_and_reload(cfg.model, model, imported, tmp_path, type(hf))
    vision = reloaded.config.vision_config
    assert (vision.window_size, list(vision.fullatt_block_indexes), vision.tokens_per_second) == (112, [1, 3], 3)
    assert reloaded.config.image_token_id == IMAGE


def test_window_order_is_hugging_faces():
    """Windows of whole, partial and exactly fitting grids (where Hugging Face's padding adds empty
    windows), frames of a video included: the same token order and window boundaries."""
    from transformers.vision_utils import get_vision_window_index

    from megaomni.media.vision_windows import Windows

    grids = torch.tensor([[1, 12, 20], [3, 8, 4], [1, 16, 16], [1, 2, 30]])
    want_order, want_cu = get_vision_window_index(grids, MERGE, 112, PATCH)
    windows = Windows(grids[:, 1:].repeat_interleave(grids[:, 0], dim=0), MERGE, 4, torch.device("cpu"))
    assert torch.equal(windows.order, want_order)
    assert torch.equal(torch.cat([torch.zeros(1, dtype=torch.long), windows.lengths.cumsum(0)]), want_cu.long())
