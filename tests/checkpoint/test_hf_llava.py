"""LLaVA in and out: a tiny random ``LlavaForConditionalGeneration`` built from a config (no
download), a CLIP tower + Llama (the penultimate layer, class token dropped) or a SigLIP tower +
tied Qwen2 (the last layer, unnormed, every row kept), imported into megaomni, gives the Hugging
Face model's logits (fp32, 1e-4) on text and two images; transformers 4's tensor names import the
same; exported back, every tensor (the unrun last layer and post_layernorm too) is bit-exact and
``from_pretrained`` loads it, nothing missing, with identical logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import (  # noqa: E402
    export_hf,
    import_hf,
    load_state,
    model_config,
    read_hf,
    write_hf,
)
from megaomni.checkpoint.hf.llava import model_fields  # noqa: E402
from megaomni.checkpoint.hf.mapping import MappingError  # noqa: E402
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.media.images import CLIP_MEAN, CLIP_STD  # noqa: E402
from megaomni.media.modality import MediaItem  # noqa: E402
from megaomni.media.vision import VISION, vision_tokens  # noqa: E402
from megaomni.validation import check_model  # noqa: E402
from tests.checkpoint.round_trip import save_perturbed  # noqa: E402

VOCAB, IMAGE, PATCH = 256, 250, 14
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=PATCH)
CASES = {  # name: (vision_config, text_config, LLaVA's fields, features per image)
    "clip_llama": (dict(TOWER, model_type="clip_vision_model", image_size=56, projection_dim=16),
                   dict(TEXT, model_type="llama"), dict(vision_feature_layer=-2), 16),
    "siglip_qwen2": (dict(TOWER, model_type="siglip_vision_model", image_size=28, vision_use_head=False),
                     dict(TEXT, model_type="qwen2", tie_word_embeddings=True),
                     dict(vision_feature_layer=-1, vision_feature_select_strategy="full"), 4),
}


def hf_model(case: str, folder) -> torch.nn.Module:
    vision, text, fields, _ = CASES[case]
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, **fields)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).float().eval()
    save_perturbed(model, folder, ("norm", "layrnorm"))
    return model


def sparse(config: dict, defaults: dict) -> dict:
    """``config`` without the fields that equal ``defaults``' (nor the sub-configs)."""
    return {k: v for k, v in config.items() if k == "model_type" or not isinstance(v, dict) and defaults.get(k) != v}


def inputs(size: int, features: int):
    """Text, image, text, image, text: Hugging Face's ids (a pad per feature) and pixels, and
    megaomni's patches (channel-major, raster order) of each image."""
    g = torch.Generator().manual_seed(1)
    ids = []
    for _ in range(2):
        ids += torch.randint(0, 200, (5,), generator=g).tolist() + [IMAGE] * features
    ids += torch.randint(0, 200, (7,), generator=g).tolist()
    pixels = torch.randn(2, 3, size, size, generator=g)
    side = size // PATCH
    patches = pixels.reshape(2, 3, side, PATCH, side, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(2, side * side, -1)
    return torch.tensor([ids]), pixels, list(patches)


@pytest.mark.parametrize("case", list(CASES))
def test_llava_import_gives_hugging_face_logits_and_export_is_exact(megatron_cpu, tmp_path, case):
    from megaomni.models.build import build_model

    hf = hf_model(case, tmp_path / "hf")
    if case == "siglip_qwen2":  # a processor's own normalisation, over the tower's usual one
        (tmp_path / "hf" / "preprocessor_config.json").write_text('{"image_mean": [0.1, 0.2, 0.3], "image_std": [2]}')
    imported = import_hf(str(tmp_path / "hf"))
    architecture, state = imported.architecture, imported.state
    cfg = OmniConfig(model=model_config(imported.sections))
    vision = cfg.model.vision
    assert (vision.image_mean, vision.image_std) == (([0.1, 0.2, 0.3], [2.0]) if case == "siglip_qwen2" else
                                                     (list(CLIP_MEAN), list(CLIP_STD)))
    side = vision.image_size // PATCH
    check_model(cfg)
    model = build_model(cfg, VOCAB, lambda name: IMAGE)
    load_state(model, state)
    model.eval()

    # transformers 4's folders: the tower a level deeper, and config.json without what is a default
    config, theirs = read_hf(str(tmp_path / "hf"))
    old = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in theirs.items()}
    defaults = {"vision_config": type(hf.config.vision_config)(), "text_config": type(hf.config.text_config)()}
    config = {**sparse(config, transformers.LlavaConfig().to_dict()),
              **{name: sparse(config[name], default.to_dict()) for name, default in defaults.items()}}
    write_hf(str(tmp_path / "old"), config, old)
    if case == "siglip_qwen2":
        (tmp_path / "old" / "preprocessor_config.json").write_bytes((tmp_path / "hf" / "preprocessor_config.json")
                                                                     .read_bytes())
    old = import_hf(str(tmp_path / "old"))
    assert old.sections == imported.sections and old.state.keys() == state.keys()
    assert all(torch.equal(t, state[k]) for k, t in old.state.items())

    tokens, pixels, patches = inputs(vision.image_size, CASES[case][3])
    with torch.no_grad():
        want = hf(input_ids=tokens, pixel_values=pixels).logits
    count = vision_tokens(side, side, 1, vision.class_token and vision.keep_class_token)
    assert count == CASES[case][3]
    media = {"vision": VISION.collate([MediaItem((side, side), side * side, count, {"time": 0}, p) for p in patches])}
    positions = torch.arange(tokens.shape[1]).expand(3, 1, -1)  # plain RoPE: every axis the same
    with torch.no_grad():
        hidden = model.embed(tokens, media)
        got = model.llm(input_ids=tokens, position_ids=positions, attention_mask=None, decoder_input=hidden)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()

    export_hf(cfg.model, model.state_dict(), str(tmp_path / "out"), architecture, imported.hf_config)
    _, exported = read_hf(str(tmp_path / "out"))
    assert exported.keys() == theirs.keys()
    assert all(torch.equal(exported[k], theirs[k]) for k in theirs)
    reloaded, info = type(hf).from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert torch.equal(reloaded.float().eval()(input_ids=tokens, pixel_values=pixels).logits, want)


@pytest.mark.parametrize("fields, message", [
    (dict(vision_feature_select_strategy="default"), "drops a siglip_vision_model's first patch"),
    (dict(vision_config=dict(model_type="siglip_vision_model")), "vision_use_head=true"),
    (dict(vision_feature_layer=[-2, -5]), "vision_feature_layer=[-2, -5]"),
])
def test_llava_refuses_what_it_cannot_hold(fields, message):
    hf = {"architectures": ["LlavaForConditionalGeneration"], "text_config": dict(TEXT, model_type="qwen2"),
          "vision_config": dict(TOWER, model_type="siglip_vision_model", image_size=28, vision_use_head=False),
          "vision_feature_select_strategy": "full", **fields}
    with pytest.raises(MappingError, match=message.replace("[", r"\[")):
        model_fields(hf)
