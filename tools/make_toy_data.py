"""Write the toy omni data set: questions whose answers only the media can give.

Kinds: ``image`` (~40%: a coloured shape, "What is shown?" -> "red circle"), ``audio`` (~30%: a
one-second tone pattern, "What is heard?" -> "rising"), ``both`` (~30%: "red circle rising").
Media sizes are drawn independently of the answers, so placeholder counts carry no information.

    python tools/make_toy_data.py --out DIR [--samples 512] [--seed 0] [--shards 2]

writes ``DIR/toy-00000.tar``..., ``DIR/tokenizer.model`` and ``DIR/meta.json``. Deterministic per seed.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import tarfile
import time
import wave

import numpy as np
from PIL import Image, ImageDraw

from megaomni.data.tokenizer import train_tokenizer

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PATTERNS = ("high", "low", "rising", "falling")
KINDS = {"image": 0.4, "audio": 0.3, "both": 0.3}
QUESTIONS = {"image": "<image>\nWhat is shown?", "audio": "<audio>\nWhat is heard?",
             "both": "<image><audio>\nWhat is shown and heard?"}
IMAGE_SIDES = (28, 56, 84)
SAMPLE_RATE = 16000
TOKENIZER_VOCAB = 200


def draw_shape(rng: np.random.Generator, colour: str, shape: str) -> bytes:
    """PNG of one filled shape on light grey; image size, shape size and position are jittered."""
    height, width = (int(rng.choice(IMAGE_SIDES)) for _ in range(2))
    image = Image.new("RGB", (width, height), (200, 200, 200))
    size = rng.uniform(0.5, 0.8) * min(height, width)
    x0 = rng.uniform(0, width - size)
    y0 = rng.uniform(0, height - size)
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    draw = ImageDraw.Draw(image)
    box = (x0, y0, x0 + size, y0 + size)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + size / 2, y0), (x0, y0 + size), (x0 + size, y0 + size)], fill=fill)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def tone(rng: np.random.Generator, pattern: str, seconds: float = 1.0) -> bytes:
    """16-bit mono WAV: a steady ~1200 Hz (high) or ~300 Hz (low) tone, or a sweep between them."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    low, high = 300.0 * rng.uniform(0.93, 1.07), 1200.0 * rng.uniform(0.93, 1.07)
    start, end = {"high": (high, high), "low": (low, low), "rising": (low, high), "falling": (high, low)}[pattern]
    freq = start * (end / start) ** (t / seconds)  # geometric sweep: even in pitch
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    signal = rng.uniform(0.3, 0.6) * np.sin(phase) + rng.normal(0.0, 0.005, t.size)
    out = io.BytesIO()
    with wave.open(out, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def make_sample(rng: np.random.Generator) -> tuple[str, list[dict], dict[str, bytes]]:
    """(kind, conversation, media members by extension)."""
    kind = str(rng.choice(list(KINDS), p=list(KINDS.values())))
    answer, media = [], {}
    if kind in ("image", "both"):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        media["png"] = draw_shape(rng, colour, shape)
        answer += [colour, shape]
    if kind in ("audio", "both"):
        pattern = str(rng.choice(PATTERNS))
        media["wav"] = tone(rng, pattern)
        answer.append(pattern)
    conversation = [{"role": "user", "content": QUESTIONS[kind]},
                    {"role": "assistant", "content": " ".join(answer)}]
    return kind, conversation, media


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0 etc.: byte-identical shards per seed
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """``samples`` samples spread in order over ``shards`` tar files ``PREFIX-00000.tar``...: a
    sample is ``KEY.json`` (its conversation) and ``KEY.EXT`` per media file."""

    def __init__(self, out: str, prefix: str, shards: int, samples: int):
        self.samples = samples
        self.tars = [tarfile.open(os.path.join(out, f"{prefix}-{i:05d}.tar"), "w") for i in range(shards)]

    def add(self, index: int, conversation: list[dict], media: dict[str, bytes]) -> None:
        tar, key = self.tars[index * len(self.tars) // self.samples], f"{index:06d}"
        _add(tar, f"{key}.json", json.dumps(conversation).encode())
        for ext, data in media.items():
            _add(tar, f"{key}.{ext}", data)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        for tar in self.tars:
            tar.close()


def write_toy_data(out: str, samples: int = 512, seed: int = 0, shards: int = 2) -> dict:
    """Write shards, tokenizer and meta.json to ``out``; returns the meta dict."""
    if samples < 1 or not 1 <= shards <= samples:
        raise ValueError(f"--samples={samples} --shards={shards}: need 1 <= shards <= samples")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds: collections.Counter = collections.Counter()
    answers: collections.Counter = collections.Counter()
    texts: list[str] = []
    with ShardWriter(out, "toy", shards, samples) as writer:
        for index in range(samples):
            kind, conversation, media = make_sample(rng)
            kinds[kind] += 1
            answers[conversation[-1]["content"]] += 1
            texts += [turn["content"] for turn in conversation]
            writer.add(index, conversation, media)
    # The corpus also spells out every answer word, so no small --samples leaves one unseen.
    texts += [" ".join([*COLOURS, *SHAPES, *PATTERNS])]
    train_tokenizer(texts, os.path.join(out, "tokenizer"), TOKENIZER_VOCAB)
    meta = {"samples": samples, "shards": shards, "seed": seed, "kinds": dict(sorted(kinds.items())),
            "vocabulary": {"colours": list(COLOURS), "shapes": list(SHAPES), "patterns": list(PATTERNS)},
            "answers": dict(sorted(answers.items()))}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    meta = write_toy_data(args.out, args.samples, args.seed, args.shards)
    kinds = ", ".join(f"{k} {n}" for k, n in meta["kinds"].items())
    print(f"toy data: {meta['samples']} samples ({kinds}) in {meta['shards']} shards + tokenizer.model "
          f"-> {args.out} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
