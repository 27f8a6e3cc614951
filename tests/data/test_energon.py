"""Megatron-Energon prepared data sets: read in place (megaomni/data/energon.py) or converted
(tools/convert_energon.py).

The ``.nv-meta`` files are made by megatron-energon's own prepare where it is importable, else
written here as megatron-energon 7.4.1 writes them (megatron/energon/flavors/webdataset/prepare.py:
``WebdatasetPreparator.prepare_dataset``, itar.py: ``TarIndexWriter``; megatron/energon/tools/
prepare.py: dataset.yaml); ``test_written_as_energon_writes_them`` checks the two agree."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import re
import shutil
import struct
import sys
import tarfile
import types

import pytest
import yaml
from PIL import Image

from megaomni.data import energon
from megaomni.data.index import StaleIndex, open_index
from megaomni.data.sample import build_sample, parse_conversation
from megaomni.data.shards import index_shards, list_shards
from megaomni.media.vision import IMAGE
from megaomni.validation import check_paths
from tests.data.conftest import ROOT, SMALL_SAMPLES
from tests.data.helpers import members, png, write_shard
from tests.data.test_loader import batches_equal, make_loader

ENERGON_VERSION = "7.4.1"
CAPTIONING = {"sample_type": {"__module__": "megatron.energon", "__class__": "CaptioningSample"},
              "field_map": {"image": "jpg,png", "caption": "txt"}}
CRUDE = {"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}


def _energon():
    try:
        from megatron.energon.flavors.webdataset.prepare import WebdatasetPreparator
    except ImportError:
        return None
    return WebdatasetPreparator


def _tar_index(path: str) -> tuple[int, bytes]:
    """(samples, the .tar.idx bytes) as Energon's ``_preprocess_tar`` finds them: a new sample
    where the key changes from the last member's, each one's first header offset, then the end."""
    offsets, last = [], None
    with tarfile.open(path) as tar:
        for member in tar:
            match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", member.name)
            if not member.isreg() or re.match(r"__[^/]*__($|/)", member.name) or not match:
                continue
            if match[1] != last:
                offsets.append(member.offset)
                last = match[1]
        offsets.append(tar.offset)
    return len(offsets) - 1, b"".join(struct.pack("Q", o) for o in offsets)


def write_nv_meta(root: str, split_yaml: dict, dataset: dict | None) -> None:
    """``energon prepare ROOT`` by hand: ``split_yaml`` as Energon writes it (brace-collapsed)."""
    shards = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root)
                    for n in names if n.endswith((".tar", ".tgz")))
    os.makedirs(os.path.join(root, energon.META), exist_ok=True)
    counts = {}
    for name in shards:
        counts[name], index = _tar_index(os.path.join(root, name))
        with open(os.path.join(root, name[:-len(".tar")] + ".tar.idx"), "wb") as f:
            f.write(index)
    with open(energon.meta_path(root, ".info.json"), "w") as f:
        json.dump({"energon_version": ENERGON_VERSION, "shard_counts": counts}, f, indent=2)
    with open(energon.meta_path(root, "split.yaml"), "w") as f:
        yaml.dump(split_yaml, f, sort_keys=False)
    if dataset is not None:
        with open(energon.meta_path(root, "dataset.yaml"), "w") as f:
            yaml.dump(dataset, f, sort_keys=False)


def energon_prepare(root: str, patterns: dict[str, str], split_yaml: dict, dataset: dict | None,
                    by_hand: bool = False) -> None:
    """The .nv-meta of ``energon prepare ROOT --split-parts PART:PATTERN ...``: Energon's own where
    it is importable, else :func:`write_nv_meta` (``split_yaml``: what Energon writes for it)."""
    preparator = None if by_hand else _energon()
    if preparator is None:
        return write_nv_meta(root, split_yaml, dataset)
    shards = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root)
                    for n in names if n.endswith((".tar", ".tgz")))
    preparator.prepare_dataset(root, shards, split_parts_patterns=list(patterns.items()), workers=1)
    if dataset is not None:  # as tools/prepare.py writes it
        with open(energon.meta_path(root, "dataset.yaml"), "w") as f:
            yaml.dump(dataset, f, sort_keys=False)


def toy_layout(small_toy: str, root: str) -> None:
    """``parts/toy-0000{0,1}.tar`` (the toy shards) and ``val/toy-00000.tar`` (the first again, its
    keys renamed: Energon refuses a key in two shards)."""
    os.makedirs(os.path.join(root, "val"))
    os.makedirs(os.path.join(root, "parts"))
    for name in ("toy-00000.tar", "toy-00001.tar"):
        shutil.copy(os.path.join(small_toy, name), os.path.join(root, "parts", name))
    with tarfile.open(os.path.join(small_toy, "toy-00000.tar")) as tar:
        write_shard(os.path.join(root, "val", "toy-00000.tar"),
                    {f"v{m.name}": tar.extractfile(m).read() for m in tar if m.isfile()})


@pytest.fixture(scope="module")
def energon_toy(small_toy, tmp_path_factory) -> str:
    """The toy shards in ``parts/`` (the train split) and one again in ``val/``, prepared as crude."""
    root = str(tmp_path_factory.mktemp("energon_toy"))
    toy_layout(small_toy, root)
    shutil.copy(os.path.join(small_toy, "tokenizer.model"), root)
    energon_prepare(root, {"train": "parts/.*", "val": "val/.*"},
                    {"split_parts": {"train": ["parts/toy-{00000..00001}.tar"], "val": ["val/toy-00000.tar"]},
                     "exclude": []}, CRUDE)
    return root


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 200, 30)).save(out, format="JPEG")
    return out.getvalue()


def captioning_set(root: str) -> str:
    """An Energon captioning data set: ``KEY.jpg`` (or ``.png``) + ``KEY.txt`` (+ a metadata
    ``KEY.json``), train shards in ``train/``, one val shard; split.yaml excludes sample c5."""
    os.makedirs(os.path.join(root, "train"))
    os.makedirs(os.path.join(root, "val"))
    write_shard(os.path.join(root, "train", "cap-000000.tar"), members({
        "c0": {"jpg": jpeg(56, 28), "txt": b"A green field.", "json": b'{"url": "http://x/0.jpg"}'},
        "c1": {"png": png(28, 28), "txt": "Ein rotes Quadrat.".encode()},
        "c2": {"jpg": jpeg(28, 28)},  # no caption
    }))
    write_shard(os.path.join(root, "train", "cap-000001.tar"), members({
        "c3": {"jpg": b"\xff\xd8not a jpeg", "txt": b"broken"},
        "c4": {"jpg": jpeg(28, 28), "txt": b"An <image> in a caption."},
        "c5": {"jpg": jpeg(28, 28), "txt": b"excluded"},
        "c6": {"jpg": jpeg(28, 56), "txt": b"A tall green field."},
    }))
    write_shard(os.path.join(root, "val", "cap-000000.tar"), members({"v0": {"jpg": jpeg(28, 28), "txt": b"val"}}))
    write_nv_meta(root, {"split_parts": {"train": ["train/cap-{000000..000001}.tar"], "val": ["val/cap-000000.tar"]},
                         "exclude": ["train/cap-000001.tar/c5"]}, CAPTIONING)
    return root


@pytest.fixture(scope="module")
def tool() -> types.ModuleType:
    """tools/convert_energon.py as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("convert_energon", os.path.join(ROOT, "tools", "convert_energon.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pattern, expected", [
    ("parts/data-{000000..000003}.tar", [f"parts/data-{i:06d}.tar" for i in range(4)]),
    ("a{8..10}", ["a8", "a9", "a10"]), ("a{01..3}", ["a01", "a02", "a03"]), ("a{3..1}", ["a3", "a2", "a1"]),
    ("a{0..6..2}", ["a0", "a2", "a4", "a6"]), ("{2..-1}", ["2", "1", "0", "-1"]), ("{a..g..2}", ["a", "c", "e", "g"]),
    ("p{2.{5..7},3.{2,3}}", ["p2.5", "p2.6", "p2.7", "p3.2", "p3.3"]), ("a{1..2}{x,y}", ["a1x", "a1y", "a2x", "a2y"]),
    ("a{,b}", ["a", "ab"]), ("a{1}", ["a{1}"]), ("{}", ["{}"]), ("plain.tar", ["plain.tar"]),
])
def test_brace_expansion_as_braceexpand(pattern, expected):
    assert energon.expand(pattern) == expected  # the braceexpand package's outputs


def test_list_shards_gives_the_train_split(energon_toy, small_toy):
    assert energon.is_prepared(energon_toy) and not energon.is_prepared(small_toy)
    assert list_shards(energon_toy) == [os.path.join(energon_toy, "parts", n)
                                        for n in ("toy-00000.tar", "toy-00001.tar")]
    assert energon.split(energon_toy, "val").shards == ["val/toy-00000.tar"]


def test_loader_trains_on_the_same_samples_as_the_plain_directory(energon_toy, cfg, tokenizer):
    plain = make_loader(copy.deepcopy(cfg), tokenizer, gbs=8, mbs=2)
    cfg.data.path = energon_toy
    check_paths(cfg)  # its shards lie in subfolders only
    prepared = make_loader(cfg, tokenizer, gbs=8, mbs=2)
    assert len(prepared.samples) == len(plain.samples) == SMALL_SAMPLES  # the val shard is not trained on
    for _ in range(5):  # past the end of the first epoch
        assert batches_equal(prepared.next_step(), plain.next_step())


def test_index_names_shards_by_their_path_and_sees_the_split_change(small_toy, tmp_path, cfg, tokenizer):
    root = str(tmp_path / "set")
    toy_layout(small_toy, root)
    split_yaml = {"split_parts": {"train": ["parts/toy-{00000..00001}.tar"], "val": ["val/toy-00000.tar"]},
                  "exclude": []}
    write_nv_meta(root, split_yaml, CRUDE)
    cfg.data.path = root
    serial = lambda f, items: [f(x, tokenizer, cfg) for x in items]  # noqa: E731  (Workers.map without workers)
    index = open_index(root, tokenizer, cfg, serial)
    with open(os.path.join(index.folder, "meta.json")) as f:
        assert [name for name, _, _ in json.load(f)["shards"]] == ["parts/toy-00000.tar", "parts/toy-00001.tar"]
    cfg.data.index = "require"
    assert len(open_index(root, tokenizer, cfg, serial)) == SMALL_SAMPLES
    split_yaml["split_parts"]["train"].append("val/toy-00000.tar")  # the same file name in another folder
    with open(energon.meta_path(root, "split.yaml"), "w") as f:
        yaml.dump(split_yaml, f, sort_keys=False)
    with pytest.raises(StaleIndex, match="shard val/toy-00000.tar is new"):
        open_index(root, tokenizer, cfg, serial)


def test_typed_or_unreadable_sets_are_refused_naming_the_tool(tmp_path):
    root = captioning_set(str(tmp_path / "cap"))
    refused = r"CaptioningSample \(image: jpg,png, caption: txt\).*convert_energon"
    with pytest.raises(energon.EnergonError, match=refused):
        list_shards(root)
    meta = energon.meta_path(root, "dataset.yaml")
    with open(meta, "w") as f:
        yaml.dump(CRUDE, f)
    with pytest.raises(energon.EnergonError, match=r"excludes single samples \(train/cap-000001.tar/c5"):
        list_shards(root)
    with open(energon.meta_path(root, "split.yaml"), "w") as f:
        yaml.dump({"split_parts": {"val": ["val/cap-000000.tar"]}, "exclude": []}, f)
    with pytest.raises(energon.EnergonError, match="no 'train' split"):
        list_shards(root)


def test_convert_captioning(tool, tmp_path, tokenizer, cfg, capsys):
    root = captioning_set(str(tmp_path / "cap"))
    out = str(tmp_path / "out")
    assert tool.main([root, out]) == 0
    printed = capsys.readouterr().out
    assert "3 samples (CaptioningSample) in 1 shards" in printed and "skipped 4 of 7 samples" in printed
    assert "missing_field 1 (first: train/cap-000000.tar:c2: caption: no txt member (has jpg))" in printed
    for reason in ("bad_image 1 (first: train/cap-000001.tar:c3", "placeholder_mismatch 1", "excluded 1"):
        assert reason in printed
    raws = index_shards(list_shards(out))
    assert [r.key for r in raws] == ["00000000_c0", "00000001_c1", "00000002_c6"]
    turns = [parse_conversation(r.conversation) for r in raws]
    assert turns[0] == [{"role": "user", "content": "<image>\nDescribe the image."},
                        {"role": "assistant", "content": "A green field."}]
    assert [t[1]["content"] for t in turns] == ["A green field.", "Ein rotes Quadrat.", "A tall green field."]
    assert [r.members[IMAGE][0][0] for r in raws] == ["jpg", "png", "jpg"]  # copied as they are
    for raw in raws:
        sample = build_sample(raw, tokenizer, cfg)
        assert sample.loss_mask.sum() > 0 and len(sample.media["vision"]) == 1
    assert tool.main([root, out]) == 2  # shards there already
    assert tool.main([root, out, "--overwrite", "--split", "val", "--prompt", "What is it?"]) == 0
    (raw,) = index_shards(list_shards(out))
    assert parse_conversation(raw.conversation)[0]["content"] == "<image>\nWhat is it?"


def test_convert_vqa_picks_one_answer(tool, tmp_path, tokenizer, cfg):
    root = str(tmp_path / "vqa")
    os.makedirs(root)
    records = {"q0": {"question": "What colour?", "answers": ["red", "green", "green"]},
               "q1": {"question": "<image> What shape?", "answers": ["round", "square"], "weights": [0.2, 0.8]},
               "q2": {"question": "How many?", "answers": "two"},
               "q3": {"question": "Which?", "answers": []}}
    write_shard(os.path.join(root, "vqa-0.tar"), members(
        {k: {"png": png(28, 28), "json": json.dumps(v).encode()} for k, v in records.items()}))
    write_nv_meta(root, {"split_parts": {"train": ["vqa-0.tar"]}, "exclude": []}, None)  # no dataset.yaml
    field_map = {"image": "png", "context": "json[question]", "answers": "json[answers]",
                 "answer_weights": "json[weights]"}
    with pytest.raises(ValueError, match="no .nv-meta/dataset.yaml"):
        tool.convert(root, str(tmp_path / "out"), progress=False)
    summary = tool.convert(root, str(tmp_path / "out"), sample_type="VQASample", field_map=field_map, progress=False)
    assert summary["samples"] == 3 and summary["skipped"] == {"no_answer": 1}
    raws = index_shards(summary["shards"])
    assert [[t["content"] for t in parse_conversation(r.conversation)] for r in raws] == [
        ["<image>\nWhat colour?", "green"], ["<image> What shape?", "square"], ["<image>\nHow many?", "two"]]
    assert all(build_sample(r, tokenizer, cfg).loss_mask.sum() > 0 for r in raws)


def test_written_as_energon_writes_them(tmp_path, small_toy):
    """The hand-written .nv-meta (what runs where megatron-energon is not installed) against
    megatron-energon's own prepare, byte for byte (index.sqlite and index.uuid: not read here)."""
    if _energon() is None:
        pytest.importorskip("megatron.energon")
    trees = []
    for by_hand in (False, True):
        root = str(tmp_path / f"hand{by_hand}")
        toy_layout(small_toy, root)
        energon_prepare(root, {"train": "parts/.*", "val": "val/.*"},
                        {"split_parts": {"train": ["parts/toy-{00000..00001}.tar"], "val": ["val/toy-00000.tar"]},
                         "exclude": []}, CAPTIONING, by_hand=by_hand)
        files = {}
        for d, _, names in os.walk(root):
            for n in names:
                if n not in ("index.sqlite", "index.uuid") and not n.endswith(".tar"):
                    with open(os.path.join(d, n), "rb") as f:
                        files[os.path.relpath(os.path.join(d, n), root)] = f.read()
        trees.append(files)
    assert trees[0] == trees[1] and len(trees[0]) == 6  # .info.json, split.yaml, dataset.yaml, 3 .tar.idx


def test_convert_reports_a_shard_cut_short(tool, tmp_path):
    root = str(tmp_path / "cut")
    os.makedirs(root)
    path = os.path.join(root, "cap-0.tar")
    write_shard(path, members({f"c{i}": {"png": png(28, 28), "txt": b"red"} for i in range(4)}))
    write_nv_meta(root, {"split_parts": {"train": ["cap-0.tar"]}, "exclude": []}, CAPTIONING)
    with open(path, "r+b") as f:  # cut inside the third sample's header: tarfile stops there without a word
        with tarfile.open(path) as tar:
            f.truncate([m for m in tar][4].offset + 100)
    summary = tool.convert(root, str(tmp_path / "out"), progress=False)
    assert (summary["samples"], summary["records"], summary["expected"]) == (2, 2, 4)
    assert summary["first_skipped"] == {"corrupt_shard": "cap-0.tar: 2 of its 4 samples read (cut short, or changed "
                                                         "since energon prepare)"}
