from __future__ import annotations

import pytest
import torch

from megaomni.data.sample import build_sample
from megaomni.errors import BadSample
from megaomni.media.audio import AUDIO, audio_tokens
from megaomni.media.vision import IMAGE, vision_tokens
from tests.data.helpers import conversation, png, raw, rng
from tests.media_views import audios, images


def test_placeholders_expand_to_encoder_output_counts(cfg, tokenizer, toy):
    clip = toy.tone(rng(), "rising")
    sample = build_sample(raw(conversation(("user", "<image> then <image>, hear <audio>?"), ("assistant", "ok")),
                              images=[png(84, 56), png(28, 56)], audios=[clip]), tokenizer, cfg)
    assert [grid for _, grid in images(sample)] == [(4, 6), (4, 2)]  # placeholder order kept
    merge = cfg.model.vision.merge_size
    n_image = sum(vision_tokens(gh, gw, merge) for _, (gh, gw) in images(sample))
    assert n_image == 6 + 2
    assert int((sample.tokens == tokenizer.media_pad_id("vision")).sum()) == n_image
    (features,) = audios(sample)
    assert features.shape == (101, cfg.model.audio.n_mels)  # 1 s at hop 160
    audio_pad = tokenizer.media_pad_id("audio")
    assert int((sample.tokens == audio_pad).sum()) == audio_tokens(101, cfg.model.audio.downsample) == 26
    assert tokenizer.token_id(IMAGE) not in sample.tokens and tokenizer.token_id(AUDIO) not in sample.tokens
    # Each placeholder's pads are contiguous, in text order: image 6, image 2, audio 26.
    runs, previous = [], None
    for t in sample.tokens.tolist():
        if t in (tokenizer.media_pad_id("vision"), tokenizer.media_pad_id("audio")):
            if t == previous:
                runs[-1][1] += 1
            else:
                runs.append([t, 1])
        previous = t
    image_pad, audio_pad = tokenizer.media_pad_id("vision"), tokenizer.media_pad_id("audio")
    assert runs == [[image_pad, 6], [image_pad, 2], [audio_pad, 26]]


def test_chat_format_labels_and_loss_mask(cfg, tokenizer):
    turns = [("user", "<image>\nWhat is shown?"), ("assistant", "red circle"),
             ("user", "What is shown?"), ("assistant", "blue square")]
    s = build_sample(raw(conversation(*turns), images=[png(28, 28)]), tokenizer, cfg)
    enc = tokenizer.encode
    u, a, e, pad = tokenizer.user_id, tokenizer.assistant_id, tokenizer.end_id, tokenizer.media_pad_id("vision")
    expected = ([u, pad, *enc("\nWhat is shown?"), e, a, *enc("red circle"), e,
                 u, *enc("What is shown?"), e, a, *enc("blue square"), e])
    assert s.tokens.tolist() == expected
    assert s.labels.tolist() == expected[1:] + [tokenizer.pad_id]
    assert s.loss_mask.dtype == torch.float32 and s.loss_mask[-1] == 0
    # Exactly the answers' tokens and their closing <|end|> are predicted with loss.
    assert s.labels[s.loss_mask.bool()].tolist() == [*enc("red circle"), e, *enc("blue square"), e]
    assert int(s.loss_mask.sum()) == len(enc("red circle")) + len(enc("blue square")) + 2
    assert tokenizer.decode(s.labels[s.loss_mask.bool()].tolist()) == "red circle<|end|>blue square<|end|>"


@pytest.mark.parametrize("turns,images,audios", [
    ((("user", "<image><image>?"), ("assistant", "x")), 1, 0),
    ((("user", "what?"), ("assistant", "x")), 1, 0),
    ((("user", "<audio>?"), ("assistant", "x")), 0, 0),
    ((("user", "<image>?"), ("assistant", "<image>")), 2, 0),
])
def test_placeholder_mismatch(cfg, tokenizer, toy, turns, images, audios):
    sample = raw(conversation(*turns), images=[png(28, 28)] * images, audios=[toy.tone(rng(), "low")] * audios)
    with pytest.raises(BadSample) as e:
        build_sample(sample, tokenizer, cfg)
    assert e.value.reason == "placeholder_mismatch"


def test_too_long(cfg, tokenizer):
    sample = raw(conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red circle")), images=[png(112, 112)])
    length = build_sample(sample, tokenizer, cfg).tokens.numel()  # 16 image tokens + text
    cfg.data.seq_length = length
    build_sample(sample, tokenizer, cfg)
    cfg.data.seq_length = length - 1
    with pytest.raises(BadSample) as e:
        build_sample(sample, tokenizer, cfg)
    assert e.value.reason == "too_long"


@pytest.mark.parametrize("data,reason", [
    (b'[{"role": "user", "content": "hi"', "bad_json"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "bad_json", id="nested-too-deep"),  # RecursionError
    pytest.param(b"[" + b"1" * 5000 + b"]", "bad_json", id="5000-digit-int"),  # ValueError, not a JSONDecodeError
    (b'[{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "y"}]', "bad_json"),
    (b"\xff\xfe[]", "bad_json"),
    (None, "missing_json"),
    (b'{"role": "user"}', "bad_conversation"),
    (b'{"conversations": [{"from": "human", "value": "hi"}]}', "bad_conversation"),
    (b'[{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]', "bad_conversation"),
    (b'[{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "y"}]', "bad_conversation"),
    (b'[{"role": "user", "content": "hi"}]', "no_answer"),
    (b'[{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \\n"}]', "no_answer"),
    (b'[{"role": "user", "content": "hi<|end|>"}, {"role": "assistant", "content": "y"}]', "reserved_token"),
])
def test_bad_conversations(cfg, tokenizer, data, reason):
    with pytest.raises(BadSample) as e:
        build_sample(raw(data), tokenizer, cfg)
    assert e.value.reason == reason


def test_audio_longer_than_limit(cfg, tokenizer, toy):
    cfg.data.max_audio_seconds = 0.5
    with pytest.raises(BadSample) as e:
        build_sample(raw(conversation(("user", "<audio>"), ("assistant", "low")), audios=[toy.tone(rng(), "low")]),
                     tokenizer, cfg)
    assert e.value.reason == "audio_too_long"


def test_disabled_modality(cfg, tokenizer):
    cfg.model.vision.enabled = False
    with pytest.raises(BadSample) as e:
        build_sample(raw(conversation(("user", "<image>"), ("assistant", "red")), images=[png(28, 28)]), tokenizer, cfg)
    assert e.value.reason == "modality_disabled"


def test_zero_media_keeps_shapes_and_tokens(cfg, tokenizer, toy):
    sample = raw(conversation(("user", "<image><audio>"), ("assistant", "red circle low")),
                 images=[png(56, 28)], audios=[toy.tone(rng(), "low")])
    real = build_sample(sample, tokenizer, cfg)
    cfg.data.zero_media = True
    blind = build_sample(sample, tokenizer, cfg)
    assert torch.equal(real.tokens, blind.tokens) and torch.equal(real.loss_mask, blind.loss_mask)
    (real_patches, real_grid), (blind_patches, blind_grid) = images(real)[0], images(blind)[0]
    assert real_grid == blind_grid and blind_patches.shape == real_patches.shape
    assert real_patches.abs().sum() > 0 and blind_patches.abs().sum() == 0
    assert audios(blind)[0].shape == audios(real)[0].shape and audios(blind)[0].abs().sum() == 0
