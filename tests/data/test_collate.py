from __future__ import annotations

import torch

from megaomni.data.collate import collate
from megaomni.data.sample import build_sample
from tests.data.helpers import conversation, png, raw, rng
from tests.media_views import audio_features, audio_lengths, image_grids, image_patches, images


def test_collate_pads_and_packs_media(cfg, tokenizer, toy):
    a = build_sample(raw(conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red circle")),
                         images=[png(56, 84)]), tokenizer, cfg)
    b = build_sample(raw(conversation(("user", "<audio>\nWhat is heard?"), ("assistant", "low")),
                         audios=[toy.tone(rng(), "low")]), tokenizer, cfg)
    c = build_sample(raw(conversation(("user", "<image><audio>"), ("assistant", "blue square high")),
                         images=[png(28, 28)], audios=[toy.tone(rng(), "high")]), tokenizer, cfg)
    batch = collate([a, b, c], tokenizer.pad_id)
    longest = max(s.tokens.numel() for s in (a, b, c))
    assert batch.tokens.shape[1] % 8 == 0 and longest <= batch.tokens.shape[1] < longest + 8
    assert batch.num_samples == 3
    for i, s in enumerate((a, b, c)):
        n = s.tokens.numel()
        assert torch.equal(batch.tokens[i, :n], s.tokens) and torch.equal(batch.labels[i, :n], s.labels)
        assert (batch.tokens[i, n:] == tokenizer.pad_id).all() and (batch.loss_mask[i, n:] == 0).all()
    assert torch.equal(batch.position_ids[2], torch.arange(batch.tokens.shape[1]))
    assert image_grids(batch).tolist() == [[6, 4], [2, 2]] and image_grids(batch).dtype == torch.long
    assert torch.equal(image_patches(batch), torch.cat([images(a)[0][0], images(c)[0][0]]))
    assert audio_lengths(batch).tolist() == [101, 101] and audio_features(batch).shape == (202, cfg.model.audio.n_mels)

    text_only = collate([b], tokenizer.pad_id)
    assert image_patches(text_only) is None and image_grids(text_only) is None
    assert audio_features(collate([a], tokenizer.pad_id)) is None


def test_collate_never_pads_past_max_length(cfg, tokenizer):
    s = build_sample(raw(conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red circle")),
                         images=[png(28, 28)]), tokenizer, cfg)
    n = s.tokens.numel()
    assert collate([s], tokenizer.pad_id, max_length=n).tokens.shape[1] == n
