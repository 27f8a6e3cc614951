"""Qwen2-VL from end to end: a sample made by megaomni's data pipeline with the model's own
tokenizer (ChatML, vision tokens) and processor (smart_resize, CLIP mean / std, 2-frame patches)
gives, through the imported model, the Hugging Face model's loss on the same ids, pixels and
answer labels (fp32, 1e-5): the loss of a first training step from the import."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from megaomni.checkpoint.hf.convert import import_hf, load_state, model_config  # noqa: E402
from megaomni.config import OmniConfig  # noqa: E402
from megaomni.data.collate import collate_packed  # noqa: E402
from megaomni.data.hf_tokenizer import HFTokenizer  # noqa: E402
from megaomni.data.sample import build_sample  # noqa: E402
from tests.data.helpers import conversation, raw  # noqa: E402
from tests.data.hf_tokenizers import qwen2_vl  # noqa: E402


def noise_png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_first_step_loss_is_hugging_faces(megatron_cpu, tmp_path):
    from megaomni.models.build import build_model, padded_vocab_size

    tokenizer = HFTokenizer(qwen2_vl(str(tmp_path / "tok")))
    ids = {t: tokenizer.token_id(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    vocab = padded_vocab_size(tokenizer.vocab_size, 0)
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0),
                         initializer_range=0.3),
        # Weights far from 0, so that the loss depends on every input (positions, pixels).
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, initializer_range=0.3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])).float().eval()
    hf.save_pretrained(tmp_path / "hf")

    imported = import_hf(str(tmp_path / "hf"))
    cfg = OmniConfig(model=model_config(imported.sections))
    cfg.data.min_pixels, cfg.data.max_pixels = 56 * 56, 112 * 112
    model = build_model(cfg, vocab, tokenizer.media_pad_ids)
    load_state(model, imported.state)
    model.eval()

    turns = conversation(("user", "<image>\nWhat is in the picture?"), ("assistant", "A red square."),
                         ("user", "And its colour?"), ("assistant", "Red, on white."))
    sample = build_sample(raw(turns, images=[noise_png(90, 61)]), tokenizer, cfg)
    (item,) = sample.media["vision"]
    batch = collate_packed([sample], tokenizer.pad_id, sample.tokens.numel() + 5)
    with torch.no_grad():
        per_token = model(batch.tokens, batch.position_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens,
                          media=batch.media)
    ours = (per_token * batch.loss_mask).sum() / batch.loss_mask.sum()

    tokens = sample.tokens[None]
    labels = torch.full_like(tokens, -100)  # Hugging Face's labels are the tokens; it shifts them itself
    trained = sample.loss_mask.bool()[:-1]
    labels[0, 1:][trained] = tokens[0, 1:][trained]
    with torch.no_grad():
        want = hf(input_ids=tokens, mm_token_type_ids=(tokens == ids["<|image_pad|>"]).int(), labels=labels,
                  pixel_values=item.values, image_grid_thw=torch.tensor([[1, *item.size]])).loss
    assert int(sample.loss_mask.sum()) > 8 and item.size == (4, 6)
    assert abs(ours.item() - want.item()) < 1e-5, (ours.item(), want.item())
