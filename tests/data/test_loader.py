from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from megaomni.data.blend import SampleStream
from megaomni.data.loader import OmniDataLoader
from megaomni.errors import BadSample
from tests.data.conftest import SMALL_SAMPLES
from tests.data.helpers import conversation, png, unpadded_rows, write_shard
from tests.media_views import audio_features, audio_lengths, image_grids, image_patches


def batches_equal(a, b) -> bool:
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
    views = (image_patches, image_grids, audio_features, audio_lengths)
    return len(a) == len(b) and all(
        all(same(getattr(x, f), getattr(y, f)) for f in ("tokens", "labels", "loss_mask", "position_ids"))
        and all(same(view(x), view(y)) for view in views)
        for x, y in zip(a, b))


def make_loader(cfg, tokenizer, rank=0, size=1, gbs=8, mbs=2, seed=7, packing=False):
    """The padded loader by default (these tests pin its order); tests/data/test_packed_loader.py
    covers packing."""
    cfg.data.global_batch_size, cfg.data.micro_batch_size, cfg.data.seed = gbs, mbs, seed
    cfg.data.packing = packing
    return OmniDataLoader(cfg, tokenizer, dp_rank=rank, dp_size=size)


def test_deterministic_for_a_seed(cfg, tokenizer):
    a, b = make_loader(cfg, tokenizer), make_loader(cfg, tokenizer)
    steps_a = [a.next_step() for _ in range(3)]
    assert all(batches_equal(x, b.next_step()) for x in steps_a)
    other = make_loader(cfg, tokenizer, seed=8)
    assert not all(batches_equal(x, other.next_step()) for x in steps_a)
    assert len(steps_a[0]) == 4 and all(batch.num_samples == 2 for batch in steps_a[0])


def test_dp_ranks_partition_the_global_batch(cfg, tokenizer):
    whole = make_loader(cfg, tokenizer, gbs=8, mbs=2)
    ranks = [make_loader(cfg, tokenizer, rank=r, size=2, gbs=8, mbs=2) for r in range(2)]
    pad = tokenizer.pad_id
    for _ in range(5):  # 40 samples: runs past the end of the first epoch
        per_rank = [unpadded_rows(r.next_step(), pad) for r in ranks]
        assert [len(rows) for rows in per_rank] == [4, 4]
        # Rank r holds samples [4r, 4r+4) of the global batch: disjoint, and together all of it.
        assert per_rank[0] + per_rank[1] == unpadded_rows(whole.next_step(), pad)


def test_order_is_a_stream_of_epoch_permutations(cfg, tokenizer):
    loader = make_loader(cfg, tokenizer, gbs=12, mbs=4, seed=3)
    n = len(loader.samples)
    assert n == SMALL_SAMPLES
    stream = [unpadded_rows(loader.next_step(), tokenizer.pad_id) for _ in range(3)]
    assert loader.state_dict() == {"epoch": 1, "offset": 36 - n, "consumed_samples": 36}
    expected = []
    for epoch in range(2):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        expected += [loader.samples[i].tokens.tolist() for i in order]
    assert [row for step in stream for row in step] == expected[:36]


def test_resume_gives_the_uninterrupted_next_step(cfg, tokenizer):
    full = make_loader(cfg, tokenizer, gbs=12, mbs=3)
    steps = [full.next_step() for _ in range(4)]
    first = make_loader(cfg, tokenizer, gbs=12, mbs=3)
    for _ in range(3):
        first.next_step()
    state = first.state_dict()
    assert all(type(v) is int for v in state.values())
    resumed = make_loader(cfg, tokenizer, gbs=12, mbs=3)
    resumed.load_state_dict(state)
    assert batches_equal(resumed.next_step(), steps[3])
    assert resumed.state_dict() == full.state_dict()


def test_corrupt_samples_are_skipped_and_counted(cfg, tokenizer, tmp_path, caplog):
    for name in os.listdir(cfg.data.path):
        if name.endswith(".tar"):
            shutil.copy(os.path.join(cfg.data.path, name), tmp_path)
    good = png(28, 28)
    question = conversation(("user", "<image>\nWhat is shown?"), ("assistant", "red circle"))
    write_shard(str(tmp_path / "zz-bad.tar"), {
        "trunc.json": question, "trunc.png": good[: len(good) // 2],
        "badjson.json": b'[{"role": "user", "content": ', "badjson.png": good,
        "twoimgs.json": question, "twoimgs.0.png": good, "twoimgs.1.png": good,
        "fine.json": question, "fine.png": good,
    })
    cfg.data.path = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="megaomni.data"):
        loader = make_loader(cfg, tokenizer)
    # The index finds what the text and the media headers show; an image cut past its header
    # only when decoded, in the step whose micro-batch holds it (then counted, as every skip).
    assert loader.skipped == {"bad_json": 1, "placeholder_mismatch": 1}
    assert len(loader.samples) == SMALL_SAMPLES + 2
    assert loader.samples.skipped().counts == {"bad_image": 1}
    (line,) = [r.getMessage() for r in caplog.records if r.name == "megaomni.data" and r.levelno == logging.INFO]
    assert "skipped 2" in line and "bad_json 1" in line
    assert len(loader.next_step()) == 4
    (bad,) = [i for i in range(len(loader.samples)) if _fails(loader.samples, i)]
    loaders = [make_loader(cfg, tokenizer, rank=rank, size=2) for rank in range(2)]
    for _ in range(5):  # 40 samples: past an epoch, on both ranks
        for each in loaders:
            each.next_step()
    taken = SampleStream([len(loader.samples)], [1.0], loaders[0].cfg.data.seed).take(40)
    assert sum(each.skipped.get("bad_image", 0) for each in loaders) == taken.count(bad) >= 1
    assert all(each.skipped.get("bad_json") == 1 for each in loaders)


def _fails(samples, i) -> bool:
    try:
        samples[i]
    except BadSample:
        return True
    return False


def test_global_batch_must_divide(cfg, tokenizer):
    with pytest.raises(ValueError, match=r"data.global_batch_size=10: .*micro_batch_size\*data_parallel=2\*2=4"):
        make_loader(cfg, tokenizer, size=2, gbs=10, mbs=2)


def test_empty_directory_names_the_path(cfg, tokenizer, tmp_path):
    cfg.data.path = str(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        make_loader(cfg, tokenizer)


def test_state_from_another_data_set_is_refused(cfg, tokenizer):
    loader = make_loader(cfg, tokenizer)
    with pytest.raises(ValueError, match="offset"):
        loader.load_state_dict({"epoch": 0, "offset": 10_000, "consumed_samples": 10_000})


def test_a_data_set_smaller_than_a_step_warns_once(cfg, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="megaomni.data"):
        loader = make_loader(cfg, tokenizer, gbs=64, mbs=8, packing=True)
        steps = [loader.next_step() for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"data: {cfg.data.path} holds {SMALL_SAMPLES} usable samples, fewer than the 64 a step takes "
                        "(data.global_batch_size=64): each is repeated about 2.0 times a step"]
    assert all(sum(b.num_samples for b in step) == 64 for step in steps)  # what it warns of
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="megaomni.data"):
        make_loader(cfg, tokenizer, gbs=SMALL_SAMPLES, mbs=8, packing=True)
    assert not caplog.records
