"""``Modality.measure``: sizes from headers alone (no pixel or sample decode) equal what
``decode`` gives, for every built-in source: images of any size, videos (with the frame cap),
audio at other sample rates. Packing, balancing and planning can then run before decoding."""

from __future__ import annotations

import numpy as np
import pytest

from megaomni.data.shards import iter_shard, list_shards
from megaomni.errors import BadSample
from megaomni.media import registry
from tests.data.helpers import png
from tests.data.test_hf_processors import FAMILIES
from tests.data.test_media import wav_bytes
from tests.data.test_video import frames


def sizes(media: list[list]) -> list[list[tuple]]:
    return [[(item.size, item.rows, item.tokens, item.info) for item in items] for items in media]


def assert_measure_is_decode(modality, source, members, cfg) -> list:
    measured = modality.measure(source, members, cfg)
    decoded = modality.decode(source, members, cfg)
    assert sizes(measured) == sizes(decoded)
    assert all(item.values is None for items in measured for item in items)
    return decoded


def test_toy_shards(cfg, small_toy):
    seen = set()
    for shard in list_shards(small_toy):
        for raw in iter_shard(shard):
            for modality, source in registry.sources():
                if members := raw.members.get(source.placeholder):
                    assert_measure_is_decode(modality, source, members, cfg)
                    seen.add(modality.name)
    assert seen == {"vision", "audio"}


@pytest.mark.parametrize("width, height", [(28, 28), (300, 41), (41, 300), (1000, 999), (5, 7)])
def test_images_of_any_size(cfg, width, height):
    vision = registry.get("vision")
    assert_measure_is_decode(vision, vision.sources[0], [("png", png(width, height))], cfg)


@pytest.mark.parametrize("cap", [0, 2, 3])
def test_videos_and_the_frame_cap(cfg, cap):
    cfg.data.max_video_frames = cap
    vision = registry.get("vision")
    (video,) = assert_measure_is_decode(vision, vision.sources[1], [("png", f) for f in frames(5)], cfg)
    assert [item.info["time"] for item in video] == list(range(cap or 5))


@pytest.mark.parametrize("rate, seconds", [(16000, 1.0), (8000, 0.75), (44100, 0.5), (22050, 1.3)])
def test_audio_at_any_rate(cfg, rate, seconds):
    audio = registry.get("audio")
    samples = np.random.default_rng(0).integers(-20000, 20000, (int(rate * seconds), 1))
    assert_measure_is_decode(audio, audio.sources[0], [("wav", wav_bytes(samples, rate))], cfg)


def test_too_long_audio_fails_alike(cfg):
    audio = registry.get("audio")
    members = [("wav", wav_bytes(np.zeros((16000 * 5, 1)), 16000))]
    for step in (audio.measure, audio.decode):
        with pytest.raises(BadSample) as e:
            step(audio.sources[0], members, cfg)
        assert e.value.reason == "audio_too_long"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width, height", [(300, 41), (1000, 999), (5, 7), (13, 400)])
def test_images_in_each_hf_familys_sizing(cfg, family, width, height):
    for name, value in FAMILIES[family].items():
        setattr(cfg.model.vision, name, value)
    vision = registry.get("vision")
    assert_measure_is_decode(vision, vision.sources[0], [("png", png(width, height))], cfg)


@pytest.mark.parametrize("cap", [0, 2, 3])
def test_videos_in_temporal_patches(cfg, cap):
    cfg.data.max_video_frames, cfg.model.vision.temporal_patch_size = cap, 2
    vision = registry.get("vision")
    (video,) = assert_measure_is_decode(vision, vision.sources[1], [("png", f) for f in frames(5)], cfg)
    assert [item.info["time"] for item in video] == list(range(-(-(cap or 5) // 2)))


@pytest.mark.parametrize("rate, seconds", [(16000, 0.004), (16000, 30.0), (8000, 0.75), (44100, 12.3)])
def test_whisper_windows_at_any_rate(cfg, rate, seconds):
    cfg.model.audio.features, cfg.data.max_audio_seconds = "whisper", 30.0
    audio = registry.get("audio")
    samples = np.random.default_rng(0).integers(-20000, 20000, (int(rate * seconds), 1))
    ((item,),) = assert_measure_is_decode(audio, audio.sources[0], [("wav", wav_bytes(samples, rate))], cfg)
    assert item.rows == 3000 and 0 < item.info["valid_frames"] <= 3000
