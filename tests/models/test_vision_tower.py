"""The vision encoder's CLIP / SigLIP options (model.vision.position_embedding, class_token,
keep_class_token, pre_norm, patch_bias, feature_layer): one-line errors where they do not fit,
FLOPs of the layers run and the class row, features per image, and an image of another grid
refused. Their numerics are the Hugging Face towers' (tests/checkpoint/test_hf_llava.py)."""

from __future__ import annotations

import pytest
import torch

from megaomni.config import ConfigError, OmniConfig
from megaomni.flops import FlopModel
from megaomni.media.modality import MediaItem
from megaomni.media.vision import VISION, vision_tokens
from megaomni.validation import check_model

CLIP = dict(position_embedding="learned", resize="shortest_edge_crop", image_size=56, class_token=True,
            pre_norm=True, feature_layer=-2, norm="layernorm", activation="quick_gelu", bias=True, merge_size=1,
            num_layers=3)


def config(**fields) -> OmniConfig:
    cfg = OmniConfig()
    cfg.model.audio.enabled = False
    for key, value in fields.items():
        setattr(cfg.model.vision, key, value)
    return cfg


@pytest.mark.parametrize("fields, message", [
    (dict(position_embedding="learned"), "model.vision.resize=fit: learned positions hold one grid"),
    (dict(position_embedding="sinusoid"), "model.vision.position_embedding=sinusoid: valid: rope_2d, learned"),
    (dict(feature_layer=-4, num_layers=3), "model.vision.feature_layer=-4: names no layer of num_layers=3"),
    (dict(feature_layer=3, num_layers=2), "model.vision.feature_layer=3: names no layer"),
    (dict(keep_class_token=True), "keep_class_token=true: needs model.vision.class_token=true"),
    (dict(class_token=True, keep_class_token=True), "model.vision.merge_size=2: a kept class token"),
])
def test_tower_options_are_checked(fields, message):
    with pytest.raises(ConfigError, match=message):
        check_model(config(**fields))


def test_flops_count_the_layers_run_and_a_class_row_per_image():
    tower = config(**CLIP)
    check_model(tower)
    plain = config(**{**CLIP, "num_layers": 2, "feature_layer": 0, "class_token": False})
    got, want = (FlopModel.from_config(c.model).item_forward("vision", 16) for c in (tower, plain))
    rows, model = 17, FlopModel.from_config(plain.model)  # the layers run: 2 of 3; 16 patches and the class row
    assert got == 2 * model.encoder_params["vision"] * rows + model.encoder_attention["vision"] * rows**2 > want


def test_features_per_image_and_a_grid_the_table_lacks(megatron_cpu):
    from megaomni.models.build import build_model

    for keep in (False, True):
        cfg = config(**CLIP, keep_class_token=keep)
        model = build_model(cfg, 256, lambda name: 250)
        items = [MediaItem((4, 4), 16, vision_tokens(4, 4, 1, keep), {"time": 0}, torch.randn(16, 588))] * 2
        assert model.vision_encoder(VISION.collate(items)).shape == (2 * (16 + keep), cfg.model.llm.hidden_size)
        assert not any(p.requires_grad for p in model.vision_encoder.unused.parameters())
    with pytest.raises(ValueError, match="an image of 4x2 patches: model.vision.position_embedding=learned holds 4x4"):
        model.vision_encoder(VISION.collate([MediaItem((4, 2), 8, 8, {"time": 0}, torch.randn(8, 588))]))
