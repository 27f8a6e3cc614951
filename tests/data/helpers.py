"""Building blocks for hand-made samples and shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from PIL import Image

from megaomni.data.shards import RawSample


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def conversation(*turns: tuple[str, str]) -> bytes:
    return json.dumps([{"role": role, "content": content} for role, content in turns]).encode()


def raw(turns: bytes, images: list[bytes] = (), audios: list[bytes] = ()) -> RawSample:
    return RawSample(key="k", shard="s.tar", conversation=turns, images=list(images),
                     audios=[("wav", a) for a in audios])


def write_shard(path: str, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def unpadded_rows(batches, pad_id: int) -> list[list[int]]:
    return [row[row != pad_id].tolist() for b in batches for row in b.tokens]


def rng() -> np.random.Generator:
    return np.random.default_rng(0)
