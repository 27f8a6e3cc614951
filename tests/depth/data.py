"""Shards of depth-map questions ("How far is it?" -> "near" / "far"): the answer is in the map."""

from __future__ import annotations

import io
import json
import os

import numpy as np

from megaomni.data.tokenizer import train_tokenizer
from tests.data.helpers import write_shard

QUESTION = "<depth>\nHow far is it?"


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def write_depth_data(out: str, samples: int = 64, seed: int = 0) -> str:
    """``samples`` depth samples in two shards and a tokenizer (the depth modality must be
    registered: its tokens are special tokens). Returns ``out``."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    members, texts = [{}, {}], []
    for i in range(samples):
        answer = ("near", "far")[i % 2]
        low, high = (0.5, 1.5) if answer == "near" else (5.0, 10.0)
        h, w = rng.choice([8, 16]), rng.choice([8, 16])
        turns = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": answer}]
        members[i % 2][f"d{i:04d}.json"] = json.dumps(turns).encode()
        members[i % 2][f"d{i:04d}.npy"] = npy(rng.uniform(low, high, (h, w)).astype(np.float32))
        texts += [t["content"] for t in turns]
    for shard, part in enumerate(members):
        write_shard(os.path.join(out, f"depth-{shard:05d}.tar"), part)
    train_tokenizer(texts, os.path.join(out, "tokenizer"), 64)
    return out
