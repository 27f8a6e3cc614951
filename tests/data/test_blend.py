"""Blending data sets by weight: data.path's syntax and checks, an interleave reproducible from
the seed whose shares follow the weights while each data set runs through its own epoch
permutations, and an exact resume from anywhere mid-epoch."""

from __future__ import annotations

import bisect
import collections
import itertools
import logging

import pytest
import torch

from megaomni.config import ConfigError, DataConfig, load_config
from megaomni.data.blend import BLOCK, SampleStream
from megaomni.validation import check_paths
from tests.data.conftest import SMALL_SAMPLES
from tests.data.helpers import conversation, members, unpadded_rows, write_shard
from tests.data.test_loader import batches_equal
from tests.data.test_packed_loader import make_loader

SIZES, WEIGHTS, NAMES = [37, 120, 9], [5.0, 3.0, 2.0], ["a", "b", "c"]
TEXT_SAMPLES = 12


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> str:
    """A second data set: TEXT_SAMPLES text-only samples and one bad one, no tokenizer."""
    out = tmp_path_factory.mktemp("text")
    samples = {f"t{i:02d}": {"json": conversation(("user", f"Say {'red ' * (i + 1)}"), ("assistant", "red"))}
               for i in range(TEXT_SAMPLES)}
    write_shard(str(out / "text.tar"), members({**samples, "broken": {"json": b"[{"}}))
    return str(out)


def test_path_lists_data_sets_with_weights():
    assert DataConfig(path="/d/a:0.7, /d/b:0.3").datasets() == [("/d/a", 0.7), ("/d/b", 0.3)]
    assert DataConfig(path="/d/a:2,/d/b").datasets() == [("/d/a", 2.0), ("/d/b", 1.0)]
    assert DataConfig(path="/d/a").datasets() == [("/d/a", 1.0)]
    assert DataConfig(path="/d/x:y").datasets() == [("/d/x:y", 1.0)]  # not a number: part of the name
    assert DataConfig().datasets() == []
    assert load_config(None, ["data.path=/d/a:0.7,/d/b:0.3"]).data.path == "/d/a:0.7,/d/b:0.3"  # one string
    assert DataConfig(path="/d/a:0.7,/d/b:0.3").tokenizer_path() == "/d/a/tokenizer.model"
    assert DataConfig(path="/d/a:0.7,/d/b:0.3", tokenizer="/t.model").tokenizer_path() == "/t.model"


@pytest.mark.parametrize("path, message", [
    ("/d/a:0.7,/d/b:0", "weight 0 of /d/b must be a positive number"),
    ("/d/a:-1", "weight -1 of /d/a must be a positive number"),
    ("/d/a:nan", "weight nan of /d/a must be a positive number"),
    ("/d/a,,/d/b", "an entry without a directory ('')"),
    (":0.5", "an entry without a directory (':0.5')"),
])
def test_bad_entries_are_named(path, message):
    with pytest.raises(ConfigError) as err:
        DataConfig(path=path).datasets()
    assert str(err.value) == f"data.path={path}: {message}"


def test_every_listed_path_is_checked(cfg, text_data, tmp_path):
    toy = cfg.data.path
    cfg.data.path = f"{toy}:0.7,{text_data}:0.3"
    check_paths(cfg)  # the tokenizer is the first data set's
    for second, why in ((tmp_path, "holds no *.tar shards"), (tmp_path / "gone", "no such directory")):
        cfg.data.path = f"{toy}:0.7,{second}:0.3"
        with pytest.raises(ConfigError) as err:
            check_paths(cfg)
        assert str(err.value) == f"data.path={cfg.data.path}: {second}: {why}"


def owners(stream: SampleStream, indices: list[int]) -> list[int]:
    return [bisect.bisect_right(stream.starts, i) - 1 for i in indices]


def test_shares_follow_the_weights():
    stream = SampleStream(SIZES, WEIGHTS, seed=11)
    counts = collections.Counter(owners(stream, stream.take(20_000)))
    shares = [counts[d] / 20_000 for d in range(3)]
    assert shares == pytest.approx([w / sum(WEIGHTS) for w in WEIGHTS], abs=0.02), shares


def test_each_data_set_runs_through_its_own_permutations():
    stream = SampleStream(SIZES, WEIGHTS, seed=11)
    taken = stream.take(5_000)
    for d, (start, size) in enumerate(zip(stream.starts, SIZES)):
        mine = [i - start for i in taken if start <= i < start + size]
        # Data set d's epoch e: permuted by seed + e + d * 2^32 (data set 0: as a single data set).
        expected = [i for e in range(len(mine) // size + 1)
                    for i in torch.randperm(size, generator=torch.Generator().manual_seed(11 + e + (d << 32))).tolist()]
        assert mine == expected[:len(mine)]


def test_blend_is_reproducible_from_the_seed():
    take = [SampleStream(SIZES, WEIGHTS, seed=seed).take(3_000) for seed in (11, 11, 12)]
    assert take[0] == take[1] and take[0] != take[2]
    assert owners(SampleStream(SIZES, WEIGHTS, 11), take[0]) != owners(SampleStream(SIZES, WEIGHTS, 12), take[2])


@pytest.mark.parametrize("cut", [1, 123, BLOCK - 1, BLOCK, 2 * BLOCK + 77])
def test_resume_from_any_position(cut):
    full = SampleStream(SIZES, WEIGHTS, seed=11).take(cut + 700)
    first = SampleStream(SIZES, WEIGHTS, seed=11)
    first.take(cut)
    peeked = list(itertools.islice(first.peek(), 10))  # looking ahead takes nothing
    state = first.state_dict()
    assert state["consumed_samples"] == cut and len(state["datasets"]) == 3
    resumed = SampleStream(SIZES, WEIGHTS, seed=11)
    resumed.load_state_dict(state, NAMES)
    assert resumed.take(700) == full[cut:] and peeked == full[cut:cut + 10]


@pytest.mark.parametrize("state, message", [
    ({"consumed_samples": 3, "datasets": [{"epoch": 0, "offset": 1}] * 2}, "each of the 3 data sets"),
    ({"epoch": 0, "offset": 1, "consumed_samples": 3}, "each of the 3 data sets"),  # a single data set's
    ({"consumed_samples": 3, "datasets": [{"epoch": 0, "offset": 40}, *[{"epoch": 0, "offset": 1}] * 2]},
     "offset=40 is past the 37 usable samples of data.path=a"),
])
def test_state_of_another_blend_is_refused(state, message):
    with pytest.raises(ValueError, match=message):
        SampleStream(SIZES, WEIGHTS, seed=11).load_state_dict(state, NAMES)


def test_loader_blends_data_sets_and_resumes_mid_epoch(cfg, tokenizer, text_data, caplog):
    cfg.data.path = f"{cfg.data.path}:0.75,{text_data}:0.25"
    blend = dict(packing=False, global_batch_size=8, micro_batch_size=4)
    with caplog.at_level(logging.INFO, logger="megaomni.data"):
        loader = make_loader(cfg, tokenizer, **blend)
    lines = [r.getMessage() for r in caplog.records if r.name == "megaomni.data"]
    assert len(lines) == 3 and lines[1].startswith(f"data: {TEXT_SAMPLES} samples from 1 shards in {text_data}")
    assert lines[2] == f"data: blending {cfg.data.datasets()[0][0]} 75.0%, {text_data} 25.0%"
    assert loader.stream.sizes == [SMALL_SAMPLES, TEXT_SAMPLES] and loader.skipped == {"bad_json": 1}

    steps = [unpadded_rows(loader.next_step(), tokenizer.pad_id) for _ in range(10)]
    reference = SampleStream([SMALL_SAMPLES, TEXT_SAMPLES], [0.75, 0.25], seed=5).take(80)
    assert [row for step in steps for row in step] == [loader.samples[i].tokens.tolist() for i in reference]
    assert sum(i >= SMALL_SAMPLES for i in reference) > TEXT_SAMPLES  # the text data set is in its 2nd epoch

    half = make_loader(cfg, tokenizer, **blend)
    for _ in range(6):
        half.next_step()
    state = half.state_dict()
    assert state["consumed_samples"] == 48 and all(entry["offset"] > 0 for entry in state["datasets"])
    resumed = make_loader(cfg, tokenizer, **blend)
    resumed.load_state_dict(state)
    assert [unpadded_rows(resumed.next_step(), tokenizer.pad_id) for _ in range(4)] == steps[6:]
    for each in (loader, half, resumed):
        each.close()


def test_one_weighted_path_is_the_plain_stream(cfg, tokenizer):
    plain = make_loader(cfg, tokenizer, global_batch_size=12)
    weighted = make_loader(cfg, tokenizer, global_batch_size=12, path=f"{cfg.data.path}:0.3")
    assert all(batches_equal(weighted.next_step(), plain.next_step()) for _ in range(4))
    assert weighted.state_dict() == plain.state_dict() and set(plain.state_dict()) == {
        "epoch", "offset", "consumed_samples"}
    for each in (plain, weighted):
        each.close()
