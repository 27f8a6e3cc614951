"""The built-in modalities' media of samples, raw samples and batches, in the shapes the tests
compare: (patches, grid) per image, features per clip, frame times, raw member bytes."""

from __future__ import annotations

import torch

from megaomni.media.audio import AUDIO
from megaomni.media.vision import IMAGE, VIDEO


def images(sample) -> list:
    return [(item.values, item.size) for item in sample.media.get("vision", [])]


def image_times(sample) -> list[int]:
    return [item.info["time"] for item in sample.media.get("vision", [])]


def audios(sample) -> list:
    return [item.values for item in sample.media.get("audio", [])]


def raw_images(raw) -> list[bytes]:
    return [data for _, data in raw.members.get(IMAGE, [])]


def raw_audios(raw) -> list[tuple[str, bytes]]:
    return raw.members.get(AUDIO, [])


def raw_videos(raw) -> list[list[bytes]]:
    frames = [data for _, data in raw.members.get(VIDEO, [])]
    return [frames] if frames else []


def image_patches(batch):
    return None if "vision" not in batch.media else batch.media["vision"].values


def image_grids(batch):
    return None if "vision" not in batch.media else batch.media["vision"].sizes


def batch_image_times(batch):
    return None if "vision" not in batch.media else batch.media["vision"].info.get("time")


def audio_features(batch):
    return None if "audio" not in batch.media else batch.media["audio"].values


def audio_lengths(batch):
    return None if "audio" not in batch.media else batch.media["audio"].sizes[:, 0]


def sample_media(images=(), audios=(), times=(), merge: int = 2, downsample: int = 4) -> dict:
    """``Sample.media`` of (patches, (gh, gw)) images (frame ``times``, default 0) and log-mel clips."""
    from megaomni.media.audio import audio_tokens
    from megaomni.media.modality import MediaItem
    from megaomni.media.vision import vision_tokens
    times = list(times) or [0] * len(images)
    media = {"vision": [MediaItem(grid, len(p), vision_tokens(*grid, merge), {"time": t}, p)
                        for (p, grid), t in zip(images, times)],
             "audio": [MediaItem((len(f),), len(f), audio_tokens(len(f), downsample), {}, f) for f in audios]}
    return {name: items for name, items in media.items() if items}


def raw_members(images=(), audios=(), video=()) -> dict:
    """``RawSample.members`` of image bytes, (ext, bytes) clips and one video's frame bytes."""
    members = {IMAGE: [("png", d) for d in images], VIDEO: [("png", d) for d in video], AUDIO: list(audios)}
    return {k: v for k, v in members.items() if v}


def vision_batch(patches, grids, times=None, merge: int = 2):
    """A :class:`MediaBatch` of images (``times``: each one's frame index; None: no times)."""
    from megaomni.media.modality import MediaBatch
    from megaomni.media.vision import vision_tokens
    grids = torch.as_tensor(grids, dtype=torch.long)
    info = {} if times is None else {"time": torch.as_tensor(times, dtype=torch.long)}
    return MediaBatch(patches, grids, info, tuple(int(h * w) for h, w in grids.tolist()),
                      tuple(vision_tokens(h, w, merge) for h, w in grids.tolist()))


def audio_batch(features, lengths, downsample: int = 4):
    """A :class:`MediaBatch` of log-mel clips of ``lengths`` frames."""
    from megaomni.media.audio import audio_tokens
    from megaomni.media.modality import MediaBatch
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    return MediaBatch(features, lengths[:, None], {}, tuple(lengths.tolist()),
                      tuple(audio_tokens(n, downsample) for n in lengths.tolist()))


def make_media(image_patches=None, image_grids=None, image_times=None, audio_features=None, audio_lengths=None,
               merge: int = 2, downsample: int = 4) -> dict:
    """``Batch.media`` of the built-in modalities, from their old per-field tensors."""
    media = {}
    if image_patches is not None:
        media["vision"] = vision_batch(image_patches, image_grids, image_times, merge)
    if audio_features is not None:
        media["audio"] = audio_batch(audio_features, audio_lengths, downsample)
    return media


def run_model(model, batch, **kwargs):
    """The omni model's forward on a :class:`Batch`, as the training step calls it."""
    return model(batch.tokens, batch.position_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens,
                 media=batch.media, **kwargs)


def vision_fields(media) -> tuple:
    """A vision :class:`MediaBatch` as (patches, grids, times or None)."""
    return media.values, media.sizes, media.info.get("time")


def audio_fields(media) -> tuple:
    """An audio :class:`MediaBatch` as (features, lengths)."""
    return media.values, media.sizes[:, 0]
