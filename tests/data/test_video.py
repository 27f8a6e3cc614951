"""Video: a ``<video>`` placeholder and its frames ``KEY.video.N.png``, read as a sequence of
images with temporal indices, from the shard to the batch."""

from __future__ import annotations

import pytest
import torch

from megaomni.data import tokenizer as tokenizer_module
from megaomni.data.collate import collate, collate_packed
from megaomni.data.sample import build_sample
from megaomni.data.shards import _split_name, index_shards
from megaomni.data.tokenizer import OmniTokenizer, train_tokenizer
from megaomni.errors import BadSample
from megaomni.media.images import load_image
from megaomni.media.vision import IMAGE, VIDEO, video_frame_indices, vision_tokens
from tests.data.helpers import conversation, load, members, png, raw, write_shard
from tests.media_views import batch_image_times, image_grids, image_times, images, raw_images, raw_members, raw_videos

FRAME = (56, 28)  # 2x4 patches of 14 pixels: 2 LLM tokens at merge 2
QUESTION = conversation(("user", "<video>\nWhat moves, and what is <image>?"), ("assistant", "a square; red"))


def frames(count: int, size: tuple[int, int] = FRAME) -> list[bytes]:
    """Frames told apart by colour: frame i is (10 i, 100, 0)."""
    return [png(*size, (10 * i, 100, 0)) for i in range(count)]


def video_sample(count: int) -> dict[str, bytes]:
    """Members of a sample with a question on a ``count``-frame video and an image after it."""
    return {"json": QUESTION, **{f"video.{i}.png": f for i, f in enumerate(frames(count))}, "png": png(28, 28)}


def raw_video(video: list[bytes], text: str = "<video> What moves?"):
    sample = raw(conversation(("user", text), ("assistant", "a square")))
    sample.members.update(raw_members(video=video))
    return sample


def decoded(data: bytes, cfg) -> torch.Tensor:
    v = cfg.model.vision
    return load_image(data, patch_size=v.patch_size, merge_size=v.merge_size, min_pixels=cfg.data.min_pixels,
                      max_pixels=cfg.data.max_pixels, in_channels=v.in_channels)[0]


def test_member_names():
    assert _split_name("d/k.video.3.png") == ("d/k", 3, "video.png")
    assert _split_name("k.video.0.JPG") == ("k", 0, "video.jpg")
    assert _split_name("k.3.png") == ("k", 3, "png") and _split_name("k.png") == ("k", None, "png")
    for other in ("k.video.png", "k.meta.json", "k.clip.0.png", "k.video.x.png", "k.video.0.1.png"):
        assert _split_name(other)[1] == -1, other  # another field: ignored


def test_video_round_trips_from_a_shard(cfg, tokenizer, tmp_path):
    stored = video_sample(4)
    # Written out of order: frames are ordered by their number, not by their place in the tar.
    order = ["json", "video.2.png", "video.0.png", "png", "video.3.png", "video.1.png"]
    write_shard(str(tmp_path / "a.tar"), members({"v": {ext: stored[ext] for ext in order}}))
    (got,) = index_shards([str(tmp_path / "a.tar")])
    assert got.error is None and raw_images(got) == [stored["png"]] and raw_videos(got) == [frames(4)]

    sample = build_sample(got, tokenizer, cfg)
    # The video's frames, then the image (placeholder order); the frames in time order, one size.
    assert [grid for _, grid in images(sample)] == [(2, 4)] * 4 + [(2, 2)]
    assert image_times(sample) == [0, 1, 2, 3, 0]
    for (patches, _), data in zip(images(sample), frames(4) + [stored["png"]], strict=True):
        assert torch.equal(patches, decoded(data, cfg))
    # <video> expands to all its frames' pads, <image> to its own: two runs, in text order.
    ids = sample.tokens.tolist()
    runs = [i for i, t in enumerate(ids) if t == tokenizer.media_pad_id("vision") and ids[i - 1] != t]
    assert ids.count(tokenizer.media_pad_id("vision")) == 4 * vision_tokens(2, 4, 2) + 1 == 9
    assert len(runs) == 2 and ids[runs[0]:runs[0] + 8] == [tokenizer.media_pad_id("vision")] * 8
    assert ids[runs[0] + 8] != tokenizer.media_pad_id("vision")
    video_id, image_id = tokenizer.token_id(VIDEO), tokenizer.token_id(IMAGE)
    assert video_id is not None and video_id not in ids and image_id not in ids


def test_frame_subsampling_is_even_and_fixed():
    assert video_frame_indices(10, 4) == [1, 3, 6, 8]  # the middle frame of each of 4 stretches
    assert video_frame_indices(5, 1) == [2]
    assert video_frame_indices(6, 3) == [1, 3, 5]
    assert video_frame_indices(3, 0) == video_frame_indices(3, 3) == video_frame_indices(3, 8) == [0, 1, 2]
    for count in range(2, 40):
        for cap in range(1, count):
            kept = video_frame_indices(count, cap)
            assert len(kept) == cap and kept == sorted(set(kept)) and 0 <= kept[0] and kept[-1] < count


def test_max_video_frames_keeps_the_expected_frames(cfg, tokenizer):
    video = frames(5)
    cfg.data.max_video_frames = 2
    sample = build_sample(raw_video(video), tokenizer, cfg)
    assert image_times(sample) == [0, 1]  # t counts the kept frames
    assert len(images(sample)) == 2
    for (patches, _), kept in zip(images(sample), (1, 3)):
        assert torch.equal(patches, decoded(video[kept], cfg))
    assert int((sample.tokens == tokenizer.media_pad_id("vision")).sum()) == 2 * 2
    cfg.data.max_video_frames = 0
    assert image_times(build_sample(raw_video(video), tokenizer, cfg)) == [0, 1, 2, 3, 4]


# Each bad video sample, with the reason it is skipped for and a part of the reason's detail.
BAD_VIDEOS = {
    "gap": ("missing_media", "no gap.video.1.* video frame member", ["video.1.png"], {}),
    "twice": ("duplicate_member", "claim the same place", [], {"video.1.jpg": png(*FRAME)}),
    "unnumbered": ("placeholder_mismatch", "1 <video> placeholders for 0 videos",
                   [f"video.{i}.png" for i in range(3)], {"video.png": png(*FRAME)}),
    "webp_frame": ("unsupported_media", "not read: webp_frame.video.3.webp", [], {"video.3.webp": b"RIFF"}),
    "mixed_sizes": ("bad_video", "frame 2 fits 4x4 patches, frame 0 2x4", ["video.2.png"],
                    {"video.2.png": png(56, 56)}),
}


def test_bad_videos_are_skipped_with_their_reason(cfg, tokenizer, tmp_path, caplog):
    samples = {"good": video_sample(3)}
    for key, (_, _, drop, add) in BAD_VIDEOS.items():
        parts = {ext: data for ext, data in video_sample(3).items() if ext not in drop}
        samples[key] = {**parts, **add}
    samples["two_videos"] = {**video_sample(3), "json": conversation(("user", "<video> <video> <image>"),
                                                                     ("assistant", "x"))}
    samples["no_frames"] = {"json": QUESTION, "png": png(28, 28)}
    write_shard(str(tmp_path / "a.tar"), members(samples))
    loader, _ = load(cfg, tokenizer, tmp_path, caplog)
    assert [s.key for s in loader.samples] == ["good"]
    assert loader.skipped == {"bad_video": 1, "duplicate_member": 1, "missing_media": 1, "placeholder_mismatch": 3,
                              "unsupported_media": 1}
    stored = {r.key: r for r in index_shards([str(tmp_path / "a.tar")])}
    for key, (reason, detail, _, _) in BAD_VIDEOS.items():
        with pytest.raises(BadSample) as e:
            build_sample(stored[key], tokenizer, cfg)
        assert (e.value.reason, key) == (reason, key) and detail in e.value.detail, e.value
    with pytest.raises(BadSample, match="2 <video> placeholders for 1 videos .a sample holds one"):
        build_sample(stored["two_videos"], tokenizer, cfg)


def test_tokenizer_without_the_video_token(cfg, tokenizer, tmp_path, monkeypatch):
    """A tokenizer trained before video support still loads; it skips video samples, and only those."""
    old = tuple(t for t in tokenizer_module.special_tokens() if t != VIDEO)
    with monkeypatch.context() as patch:
        patch.setattr(tokenizer_module, "special_tokens", lambda: old)
        path = train_tokenizer(["<image> What is shown? a red square", "<audio> low"] * 10,
                               str(tmp_path / "old"), vocab_size=60)
    before = OmniTokenizer(path)
    # new ids unchanged by <video>
    assert before.token_id(VIDEO) is None and before.token_id(IMAGE) == tokenizer.token_id(IMAGE)
    with pytest.raises(BadSample) as e:
        build_sample(raw_video(frames(2)), before, cfg)
    assert e.value.reason == "unsupported_media" and "has no <video> token" in e.value.detail
    still = raw(conversation(("user", "<image>?"), ("assistant", "red")), images=[png(28, 28)])
    assert image_times(build_sample(still, before, cfg)) == [0]


def test_collate_carries_frame_times(cfg, tokenizer):
    both = raw_video(frames(3), "<image> then <video>?")
    both.members.update(raw_members(images=[png(28, 28)]))
    video = build_sample(both, tokenizer, cfg)
    still = build_sample(raw(conversation(("user", "<image>"), ("assistant", "red")), images=[png(28, 56)]),
                         tokenizer, cfg)
    text = build_sample(raw(conversation(("user", "hi"), ("assistant", "red"))), tokenizer, cfg)
    assert image_times(video) == [0, 0, 1, 2]
    length = sum(s.tokens.numel() for s in (still, video, text)) + 3
    for batch in (collate([still, video, text], tokenizer.pad_id),
                  collate_packed([still, video, text], tokenizer.pad_id, length)):
        assert batch_image_times(batch).dtype == torch.long and batch_image_times(batch).tolist() == [0, 0, 0, 1, 2]
        assert image_grids(batch).tolist() == [[4, 2], [2, 2]] + [[2, 4]] * 3
        assert torch.equal(batch_image_times(batch.to("cpu")), batch_image_times(batch))
    assert batch_image_times(collate([still], tokenizer.pad_id)).tolist() == [0]
    assert batch_image_times(collate([text], tokenizer.pad_id)) is None
