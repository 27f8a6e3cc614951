"""tools/prepare_data.py on randomly damaged input: seeded byte flips, truncations and insertions
of every media type it takes (PNG and JPEG images, 16- and 8-bit WAV, a video's frames) and of
the JSON lines themselves. It must finish (exit 0, no traceback), write every intact record,
count each other one as a written sample or a skip with a reason, and write nothing the loader
cannot decode."""

from __future__ import annotations

import io
import json
import random
import re

import numpy as np
from PIL import Image

from megaomni.data.shards import index_shards, list_shards
from megaomni.media.images import decode_image
from megaomni.media.sounds import load_audio
from tests.media_views import raw_audios, raw_images, raw_videos
from tests.tools.test_prepare_data import human_gpt, wav

CASES = 8  # damaged copies of each original
REASONS = {"bad_image", "bad_audio", "bad_json", "bad_record", "bad_conversation", "no_conversations",
           "missing_media", "placeholder_mismatch", "unsupported_media"}


def picture(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def damaged(data: bytes, rng: random.Random) -> bytes:
    """One flip (1-4 bytes), truncation or insertion (1-16 random bytes), half the time in the
    first 64 bytes, where the headers are."""
    data = bytearray(data)
    at = rng.randrange(min(64, len(data)) if rng.random() < 0.5 else len(data))
    kind = rng.choice(("flip", "truncate", "insert"))
    if kind == "flip":
        for i in range(at, min(at + rng.randint(1, 4), len(data))):
            data[i] ^= rng.randrange(1, 256)
    elif kind == "truncate":
        del data[at:]
    else:
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def test_damaged_media_and_json_are_skips(tool, tmp_path, capsys):
    rng = random.Random(18)
    media = {"png": picture("PNG"), "jpg": picture("JPEG"), "wav": wav(2, 0.05), "wav8": wav(1, 0.05)}
    records: list[bytes] = []
    good: list[str] = []

    def add(key: str, field: str, names: list[str], question: str, intact: bool) -> None:
        value = names if field == "video" or len(names) > 1 else names[0]
        records.append(json.dumps({"id": key, field: value, "conversations": human_gpt(question, "ok")}).encode())
        good.extend([key] if intact else [])

    for kind, data in media.items():
        ext = kind[:3]
        field, question = ("audio", "<audio>") if ext == "wav" else ("image", "<image>")
        (tmp_path / f"{kind}.{ext}").write_bytes(data)
        add(f"good-{kind}", field, [f"{kind}.{ext}"], question, intact=True)
        for i in range(CASES):
            (tmp_path / f"{kind}-{i}.{ext}").write_bytes(damaged(data, rng))
            add(f"{kind}-{i}", field, [f"{kind}-{i}.{ext}"], question, intact=False)
    add("good-video", "video", ["png.png"] * 3, "<video>", intact=True)
    for i in range(CASES):  # a video is its frames: one damaged frame among intact ones
        add(f"video-{i}", "video", ["png.png", f"png-{i}.png", "jpg.jpg"], "<video>", intact=False)
    for _ in range(3 * CASES):  # damaged JSON lines (a newline would split one: it is kept out)
        records.append(damaged(rng.choice(records), rng).replace(b"\n", b" "))
    (tmp_path / "fuzz.jsonl").write_bytes(b"\n".join(records) + b"\n")
    total = sum(1 for line in records if line.strip())

    # In process (an exception fails the test as a traceback would); the printing of skip reasons
    # by a real process is test_prepare_data's.
    assert tool.main(["--out", str(tmp_path / "out"), "--llava", str(tmp_path / "fuzz.jsonl")]) == 0
    out = capsys.readouterr().out
    written = int(re.search(r"prepare_data: (\d+) samples", out)[1])
    skipped = {reason: int(n) for reason, n in re.findall(r"^  (\w+) (\d+) \(first: ", out, re.M)}
    assert written + sum(skipped.values()) == total  # every record: written, or a skip with a reason
    assert f"skipped {sum(skipped.values())} of {total} records" in out
    # Damaged headers are found; damage inside pixel or sample data may still decode, and is written.
    assert set(skipped) <= REASONS and {"bad_image", "bad_audio", "bad_json"} <= set(skipped)
    assert "object at 0x" not in out
    for line in re.findall(r"^  \w+ \d+ \(first: (.*)\)$", out, re.M):  # each names its record
        assert re.match(r"fuzz\.jsonl:\d+", line), line

    raws = index_shards(list_shards(str(tmp_path / "out")))
    keys = {raw.key.split("_", 1)[1] for raw in raws if "_" in raw.key}
    assert set(good) <= keys  # every intact record written
    for raw in raws:  # and nothing written that the loader cannot read
        for data in [*raw_images(raw), *(frame for video in raw_videos(raw) for frame in video)]:
            decode_image(data, "RGB", "pillow")
        for ext, data in raw_audios(raw):
            load_audio(data, ext)
