"""tools/make_synthetic_data.py: a dynamic omni mix that the data layer reads back whole, at the sizes asked for."""

from __future__ import annotations

import importlib.util
import json
import os
import tarfile
import types

import pytest

from megaomni.config import load_config
from megaomni.data.loader import OmniDataLoader
from megaomni.data.tokenizer import OmniTokenizer
from megaomni.validation import validate
from tests.data.test_index import assert_in_memory_steps
from tests.media_views import audios, image_times, images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "make_synthetic_data.py")
CONFIG = os.path.join(ROOT, "examples", "configs", "omni_2b.yaml")
SAMPLES, SEED = 30, 3
MIX = "image:1,audio:1,video:1,text:1"
# Small media, so that reading them back stays fast; --name MIN,MAX each.
SIZES = {"image_side": "28,84", "images": "1,2", "audio_seconds": "0.5,2", "video_frames": "2,4",
         "video_side": "28,56", "text_tokens": "20,120", "answer_words": "2,6"}
# The benchmark config's data settings, with limits that match SIZES.
OVERRIDES = ["data.max_pixels=7056", "data.max_audio_seconds=2.0", "data.seq_length=256", "data.workers=0",
             "data.prefetch=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def tool() -> types.ModuleType:
    """tools/make_synthetic_data.py as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_synthetic_data", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(tool, out, seed: int = SEED) -> None:
    sizes = [arg for name, value in SIZES.items() for arg in (f"--{name.replace('_', '-')}", value)]
    tool.main(["--out", str(out), "--samples", str(SAMPLES), "--seed", str(seed), "--shards", "3",
               "--mix", MIX, *sizes])


@pytest.fixture(scope="module")
def synthetic(tool, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synthetic")
    generate(tool, out)
    return str(out)


def kinds_of(path: str) -> dict[str, str]:
    """Each sample's kind, from its tar members; and its conversation."""
    kinds = {}
    for name in sorted(n for n in os.listdir(path) if n.endswith(".tar")):
        with tarfile.open(os.path.join(path, name)) as tar:
            names = tar.getnames()
        for key in (n[:-5] for n in names if n.endswith(".json")):
            media = [n for n in names if n.startswith(key + ".") and not n.endswith(".json")]
            kinds[key] = ("video" if any(".video." in n for n in media) else "audio" if any(n.endswith(".wav") for n in media)
                          else "image" if media else "text")
    return kinds


def conversations(path: str) -> dict[str, list[dict]]:
    found = {}
    for name in sorted(n for n in os.listdir(path) if n.endswith(".tar")):
        with tarfile.open(os.path.join(path, name)) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    found[member.name[:-5]] = json.load(tar.extractfile(member))
    return found


def test_reads_back_whole_at_the_sizes_asked(synthetic, capsys):
    cfg = load_config(CONFIG, [f"data.path={synthetic}", *OVERRIDES])
    validate(cfg, world_size=2)  # the benchmark recipe itself: pp=2 on two ranks
    tokenizer = OmniTokenizer(cfg.data.tokenizer_path())
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    assert loader.skipped == {} and len(loader.samples) == SAMPLES

    kinds = kinds_of(synthetic)
    with open(os.path.join(synthetic, "meta.json")) as f:
        meta = json.load(f)
    assert set(kinds.values()) == {"image", "audio", "video", "text"}
    assert meta["kinds"] == {k: list(kinds.values()).count(k) for k in sorted(set(kinds.values()))}
    texts = conversations(synthetic)
    for sample in loader.samples:
        kind = kinds[sample.key]
        grids = [grid for _, grid in images(sample)]
        assert all(2 <= side <= 6 for grid in grids for side in grid)  # 28-84 px in 14-px patches
        if kind == "image":
            assert 1 <= len(grids) <= 2 and image_times(sample) == [0] * len(grids) and not audios(sample)
        elif kind == "video":  # frames of one size, 28-56 px, in time order
            assert 2 <= len(grids) <= 4 and len(set(grids)) == 1 and max(grids[0]) <= 4
            assert image_times(sample) == list(range(len(grids))) and not audios(sample)
        elif kind == "audio":  # 0.5-2 s at 100 log-mel frames a second
            (clip,) = audios(sample)
            assert not grids and 51 <= clip.shape[0] <= 201 and clip.shape[1] == cfg.model.audio.n_mels
        else:
            assert not grids and not audios(sample)
            passage = texts[sample.key][0]["content"].rsplit("\n", 1)[0]
            assert 20 <= len(tokenizer.encode(passage)) <= 120
        assert sample.loss_mask.sum() > 0  # an answer to learn
    # The summary counts what the pipeline makes of the samples.
    mean = meta["mean_per_sample"]
    assert mean["llm_tokens"] == round(sum(s.tokens.numel() for s in loader.samples) / SAMPLES, 1)
    assert mean["patches"] == round(sum(len(p) for s in loader.samples for p, _ in images(s)) / SAMPLES, 1)
    assert mean["audio_frames"] == round(sum(len(f) for s in loader.samples for f in audios(s)) / SAMPLES, 1)
    assert meta["longest_llm_tokens"] == max(s.tokens.numel() for s in loader.samples)
    # One packed step of the recipe's budgets.
    assert sum(batch.num_samples for batch in loader.next_step()) == cfg.data.global_batch_size


def test_same_seed_same_files(tool, synthetic, tmp_path, capsys):
    generate(tool, tmp_path / "again")
    generate(tool, tmp_path / "other", seed=SEED + 1)
    out = capsys.readouterr().out
    assert out.startswith(f"synthetic data: {SAMPLES} samples") and "mean per sample" in out
    names = sorted(n for n in os.listdir(synthetic) if n != ".megaomni-index")  # a loader indexed it
    assert names == sorted(os.listdir(tmp_path / "again"))
    assert names == ["meta.json", *(f"synth-{i:05d}.tar" for i in range(3)), "tokenizer.model", "tokenizer.vocab"]
    # tokenizer.model names the directory it was written to; its pieces are in tokenizer.vocab.
    for name in ("meta.json", "tokenizer.vocab", *(n for n in names if n.endswith(".tar"))):
        assert (tmp_path / "again" / name).read_bytes() == open(os.path.join(synthetic, name), "rb").read(), name
    # Another seed: other samples, the same tokenizer (data sets of several seeds blend).
    assert (tmp_path / "other" / "synth-00000.tar").read_bytes() != open(os.path.join(synthetic, "synth-00000.tar"), "rb").read()
    assert (tmp_path / "other" / "tokenizer.vocab").read_bytes() == open(os.path.join(synthetic, "tokenizer.vocab"), "rb").read()


def test_options_are_checked(tool, tmp_path):
    assert tool.parse_mix("image:2,text:2") == {"image": 0.5, "text": 0.5}
    for argv in (["--mix", "image:1,smell:1"], ["--mix", "text:0"], ["--image-side", "14,28"], ["--images", "3,2"]):
        with pytest.raises(SystemExit):
            tool.main(["--out", str(tmp_path), "--samples", "2", *argv])


def test_steps_from_the_index_are_those_of_the_decoded_samples(synthetic):
    cfg = load_config(CONFIG, [f"data.path={synthetic}", *OVERRIDES])
    assert_in_memory_steps(cfg, OmniTokenizer(os.path.join(synthetic, "tokenizer.model")), dp=2, steps=2)
