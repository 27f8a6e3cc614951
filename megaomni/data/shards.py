"""WebDataset-style tar shards: members ``KEY.EXT`` grouped into one raw sample per key.

Per key: ``KEY.json`` (the conversation), images ``KEY.png``/``KEY.jpg`` or ``KEY.0.png``,
``KEY.1.png``, ... and audio ``KEY.wav``/``KEY.flac`` or ``KEY.0.wav``, ... in placeholder
order. Bytes are not decoded here, so that a bad member fails its sample, not the shard.
"""

from __future__ import annotations

import glob
import os
import tarfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

IMAGE_EXTS = ("png", "jpg", "jpeg")
AUDIO_EXTS = ("wav", "flac")


@dataclass
class RawSample:
    key: str
    shard: str
    conversation: Optional[bytes] = None  # the KEY.json bytes, parsed when the sample is built
    images: list[bytes] = field(default_factory=list)
    audios: list[tuple[str, bytes]] = field(default_factory=list)  # (extension, bytes)


def list_shards(path: str) -> list[str]:
    """The ``*.tar`` files of directory ``path``, sorted."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data path {path}: no such directory")
    shards = sorted(glob.glob(os.path.join(path, "*.tar")))
    if not shards:
        raise FileNotFoundError(f"data path {path}: holds no *.tar shards")
    return shards


def _split_name(name: str) -> tuple[str, Optional[int], str]:
    """``dir/KEY.3.png`` -> (``dir/KEY``, 3, ``png``); ``KEY.png`` -> (``KEY``, None, ``png``).
    The key ends at the first dot of the base name, as in WebDataset."""
    head, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    index: Optional[int] = None
    if "." in ext:
        number, _, ext = ext.rpartition(".")
        index = int(number) if number.isdigit() else -1  # -1: not a media index, ignored below
    return os.path.join(head, stem), index, ext.lower()


def iter_shard(path: str) -> Iterator[RawSample]:
    """Raw samples of one shard, in order of first appearance of their key. Members with other
    extensions are ignored (WebDataset shards may carry fields this pipeline does not read)."""
    samples: dict[str, RawSample] = {}
    media: dict[str, list[tuple[int, str, bytes]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, index, ext = _split_name(member.name)
                if index == -1 or ext not in ("json", *IMAGE_EXTS, *AUDIO_EXTS):
                    continue
                data = tar.extractfile(member).read()
                sample = samples.setdefault(key, RawSample(key=key, shard=path))
                if ext == "json":
                    sample.conversation = data
                else:
                    # A lone KEY.png sorts first; KEY.0.png, KEY.1.png, ... by number.
                    media.setdefault(key, []).append((-1 if index is None else index, ext, data))
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"shard {path}: unreadable tar file ({e})") from e
    for key, sample in samples.items():
        for _, ext, data in sorted(media.get(key, []), key=lambda m: m[0]):
            if ext in IMAGE_EXTS:
                sample.images.append(data)
            else:
                sample.audios.append((ext, data))
        yield sample


def index_shards(paths: list[str]) -> list[RawSample]:
    """Every raw sample of ``paths``, in shard order. Holds all bytes in memory: fine for small
    data sets; a streaming reader can replace this function without touching its callers."""
    return [sample for path in paths for sample in iter_shard(path)]
