"""Qwen2-VL in and out: a tiny random ``Qwen2VLForConditionalGeneration`` built from a config (no
download), imported into megaomni, gives the Hugging Face model's logits (fp32, 1e-4) on a row of
text, two images and a two-step video; its multimodal RoPE positions are Hugging Face's; exported
back, every tensor is bit-exact and ``from_pretrained`` loads it."""

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

VOCAB, IMAGE, VIDEO, START, END = 256, 250, 251, 252, 253
MERGE, PATCH, T = 2, 14, 2


def hf_model(folder) -> torch.nn.Module:
    config = transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=PATCH,
                           spatial_merge_size=MERGE, temporal_patch_size=T, in_channels=3),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    torch.manual_seed(0)
    model = transformers.Qwen2VLForConditionalGeneration(config).float().eval()
    save_perturbed(model, folder, ("norm", "ln_q"))
    return model


def inputs(media=(("image", [(4, 6)]), ("video", [(4, 4), (4, 4)]), ("image", [(2, 2)]))):
    """Text before each of ``media`` ((kind, patch grids of its items): by default an image of 4x6
    patches, a video of 2 steps of 4x4, an image of 2x2) and after the last: token ids with Hugging
    Face's pad ids, the mm token types, the patches, and megaomni's items and runs."""
    g = torch.Generator().manual_seed(1)
    ids, types, runs, items_all = [], [], [], []
    for kind, grids in media:
        ids += torch.randint(0, 200, (5,), generator=g).tolist() + [START]
        types += [0] * 6
        items = [MediaItem((h, w), h * w, (h // MERGE) * (w // MERGE), {"time": t}, None)
                 for t, (h, w) in enumerate(grids)]
        count = sum(i.tokens for i in items)
        runs.append(("vision", len(ids), len(ids) + count, items))
        ids += [IMAGE if kind == "image" else VIDEO] * count
        types += [1 if kind == "image" else 2] * count
        ids.append(END)
        types.append(0)
        items_all += items
    ids += torch.randint(0, 200, (7,), generator=g).tolist()
    types += [0] * 7
    width = 3 * T * PATCH * PATCH
    patches = [torch.randn(i.rows, width, generator=g) for i in items_all]
    return torch.tensor([ids]), torch.tensor([types]), runs, items_all, patches


def test_qwen2_vl_import_gives_hugging_face_logits_and_export_is_exact(megatron_cpu, tmp_path):
    from megaomni.models.build import build_model

    hf = hf_model(tmp_path / "hf")
    imported = import_hf(str(tmp_path / "hf"))
    sections, state = imported.sections, imported.state
    cfg = OmniConfig(model=model_config(sections))
    model = build_model(cfg, VOCAB, lambda name: (IMAGE, VIDEO))
    load_state(model, state)
    model.eval()

    tokens, types, runs, items, patches = inputs()
    image_items = [0, 3]
    image_grid = torch.tensor([[1, *items[i].size] for i in image_items])
    video_grid = torch.tensor([[2, *items[1].size]])
    with torch.no_grad():
        want = hf(input_ids=tokens, mm_token_type_ids=types, pixel_values=torch.cat([patches[i] for i in image_items]),
                  image_grid_thw=image_grid, pixel_values_videos=torch.cat(patches[1:3]),
                  video_grid_thw=video_grid).logits
        hf_positions, _ = hf.model.get_rope_index(tokens, types, image_grid, video_grid)
    positions = mrope_positions(tokens.shape[1], runs, cfg)
    assert torch.equal(positions, hf_positions[:, 0])

    media = {"vision": VISION.collate([MediaItem(i.size, i.rows, i.tokens, i.info, p) for i, p in zip(items, patches)])}
    with torch.no_grad():
        hidden = model.embed(tokens, media)
        got = model.llm(input_ids=tokens, position_ids=positions[:, None], attention_mask=None, decoder_input=hidden)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()

    reloaded = export_and_reload(cfg.model, model, imported, tmp_path, type(hf))
    assert reloaded.config.vision_config.hidden_act == "quick_gelu" and reloaded.config.image_token_id == IMAGE
    assert reloaded.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
