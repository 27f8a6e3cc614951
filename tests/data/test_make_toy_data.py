from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

from megaomni.data.tokenizer import OmniTokenizer
from tests.data.conftest import ROOT, SMALL_SAMPLES


def test_toy_data_contents(small_toy, toy):
    shards = sorted(n for n in os.listdir(small_toy) if n.endswith(".tar"))
    assert shards == ["toy-00000.tar", "toy-00001.tar"]
    kinds = {}
    for name in shards:
        with tarfile.open(os.path.join(small_toy, name)) as tar:
            names = tar.getnames()
            for member in names:
                if member.endswith(".json"):
                    key = member[:-5]
                    turns = json.load(tar.extractfile(member))
                    has_image, has_audio = f"{key}.png" in names, f"{key}.wav" in names
                    kind = {(True, False): "image", (False, True): "audio",
                            (True, True): "both"}[(has_image, has_audio)]
                    kinds[key] = kind
                    assert turns[0]["content"] == toy.QUESTIONS[kind]
                    words = turns[1]["content"].split()
                    assert len(words) == {"image": 2, "audio": 1, "both": 3}[kind]
    assert len(kinds) == SMALL_SAMPLES
    assert set(kinds.values()) == {"image", "audio", "both"}
    with open(os.path.join(small_toy, "meta.json")) as f:
        meta = json.load(f)
    assert meta["samples"] == SMALL_SAMPLES and sum(meta["kinds"].values()) == SMALL_SAMPLES
    assert meta["kinds"] == {k: list(kinds.values()).count(k) for k in ("audio", "both", "image")}
    tokenizer = OmniTokenizer(os.path.join(small_toy, "tokenizer.model"))
    assert tokenizer.vocab_size <= 200
    for word in ("red", "triangle", "falling"):  # every answer word encodes without unk
        assert tokenizer.sp.unk_id() not in tokenizer.encode(word)


def test_deterministic_per_seed(toy, tmp_path):
    for run in ("a", "b"):
        toy.write_toy_data(str(tmp_path / run), samples=6, seed=5, shards=1)
    for name in ("toy-00000.tar", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_command_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_toy_data.py"), "--out", str(tmp_path),
                           "--samples", "8", "--shards", "3"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("toy data: 8 samples") and len(proc.stdout.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "tokenizer.model", "tokenizer.vocab",
                                            "toy-00000.tar", "toy-00001.tar", "toy-00002.tar"]
