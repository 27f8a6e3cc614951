"""Building blocks for hand-made samples and shards."""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib

import numpy as np
import torch
from PIL import Image

from megaomni.data.loader import OmniDataLoader
from megaomni.data.shards import RawSample
from tests.media_views import audios, images, raw_members


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def rgb16_png(samples: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (colour type 2, bit depth 16) of ``samples`` ``[H, W, 3]``, written by
    hand: Pillow cannot save one."""
    height, width, _ = samples.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)  # filter type 0 before each row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def conversation(*turns: tuple[str, str]) -> bytes:
    return json.dumps([{"role": role, "content": content} for role, content in turns]).encode()


def raw(turns: bytes, images: list[bytes] = (), audios: list[bytes] = ()) -> RawSample:
    return RawSample(key="k", shard="s.tar", conversation=turns,
                     members=raw_members(images, [("wav", a) for a in audios]))


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


def members(samples: dict[str, dict[str, bytes]]) -> dict[str, bytes]:
    """``{key: {ext: bytes}}`` -> tar members ``{"key.ext": bytes}``, in that order."""
    return {f"{key}.{ext}": data for key, parts in samples.items() for ext, data in parts.items()}


def bad_samples(clip: bytes) -> dict[str, tuple[str, dict[str, bytes]]]:
    """One sample per kind of bad input: ``{key: (reason it must be skipped for, {ext: bytes})}``.
    ``clip`` is a good 16-bit WAV file; ``data.seq_length`` must be under 600 tokens."""
    image = png(28, 28)
    seen = conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red square"))
    heard = conversation(("user", "<audio>\nWhat is heard?"), ("assistant", "low"))
    data_at = clip.index(b"data")
    return {
        "corrupt_png": ("bad_image", {"json": seen, "png": image[:16] + bytes(range(256)) * 2}),
        "cut_png": ("bad_image", {"json": seen, "png": image[:len(image) // 2]}),
        "garbage_wav": ("bad_audio", {"json": heard, "wav": b"RIFF\x10\x00\x00\x00WAVEjunk" * 4}),
        "cut_wav": ("bad_audio", {"json": heard, "wav": clip[:len(clip) // 2]}),
        "zero_rate_wav": ("bad_audio", {"json": heard, "wav": clip[:24] + struct.pack("<I", 0) + clip[28:]}),
        # A chunk that claims 1 GiB: the wave module raises a bare RuntimeError.
        "overrun_wav": ("bad_audio", {"json": heard, "wav": clip[:data_at] + b"junk" + struct.pack("<I", 1 << 30)
                                      + clip[data_at + 8:]}),
        "mp3": ("unsupported_media", {"json": heard, "mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00not decoded"}),
        "gap": ("missing_media", {"json": conversation(("user", "<image> <image>?"), ("assistant", "red")),
                                  "0.png": image, "2.png": image}),
        "two_for_one": ("duplicate_member", {"json": seen, "png": image, "jpg": image}),
        "no_file": ("placeholder_mismatch", {"json": seen}),
        "extra_file": ("placeholder_mismatch", {"json": conversation(("user", "What?"), ("assistant", "red")),
                                                "png": image}),
        "no_json": ("missing_json", {"png": image}),
        "bad_json": ("bad_json", {"json": b'[{"role": "user", "content": '}),
        "not_a_conversation": ("bad_conversation", {"json": b'{"conversations": [{"from": "human"}]}'}),
        "no_answer": ("no_answer", {"json": conversation(("user", "What is shown?"))}),
        "empty_answer": ("no_answer", {"json": conversation(("user", "What is shown?"), ("assistant", ""))}),
        # Too long even under data.truncate: a cut leaves no answer token.
        "too_long": ("too_long", {"json": conversation(("user", "What is shown? " * 200), ("assistant", "red"))}),
    }


def good_samples(clip: bytes) -> dict[str, dict[str, bytes]]:
    """Good samples g0 (image), g1 (audio), g2 (both), g3 (text); ``clip`` is a good WAV file."""
    image = png(56, 28)
    return {
        "g0": {"json": conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red square")), "png": image},
        "g1": {"json": conversation(("user", "<audio>\nWhat is heard?"), ("assistant", "low")), "wav": clip},
        "g2": {"json": conversation(("user", "<image><audio>\nWhat is shown and heard?"),
                                    ("assistant", "red square low")), "0.png": image, "wav": clip},
        "g3": {"json": conversation(("user", "What is shown?"), ("assistant", "red"))},
    }


def shard_of_images(path, count: int) -> dict[str, tarfile.TarInfo]:
    """Samples s0..s{count-1} (each KEY.json + KEY.png) written to ``path``; their members by name."""
    write_shard(str(path), members({f"s{i}": {"json": conversation(("user", "<image>"), ("assistant", "red")),
                                              "png": png(28 * (1 + i % 3), 28)} for i in range(count)}))
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar}


def load(cfg, tokenizer, path, caplog) -> tuple[OmniDataLoader, str]:
    """The loader of ``path`` and its one load log line (INFO; small test sets also warn of repeats)."""
    cfg.data.path = str(path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="megaomni.data"):
        loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "megaomni.data" and r.levelno == logging.INFO]
    return loader, line


def assert_same_samples(got, expected) -> None:
    assert [s.key for s in got] == [s.key for s in expected]
    for a, b in zip(got, expected):
        assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "labels", "loss_mask"))
        assert [grid for _, grid in images(a)] == [grid for _, grid in images(b)]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(images(a), images(b)))
        assert all(torch.equal(x, y) for x, y in zip(audios(a), audios(b)))
