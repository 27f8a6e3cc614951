"""Worker processes and prefetching change nothing a run sees: the same samples, skip counts and
log line with data.workers=2 as in-process; the same steps, and the same checkpointed position,
with the next step made in the background as without."""

from __future__ import annotations

import copy
import glob
import os
import re
import shutil
import threading

import numpy as np
import pytest
import torch

from megaomni.data.prefetch import Prefetcher
from tests.data.helpers import (
    bad_samples,
    good_samples,
    load,
    members,
    shard_of_images,
    write_shard,
)
from tests.data.test_loader import batches_equal
from tests.data.test_packed_loader import make_loader


def test_workers_index_and_decode_the_same(cfg, tokenizer, clip, tmp_path, caplog):
    for shard in glob.glob(os.path.join(cfg.data.path, "*.tar")):
        shutil.copy(shard, tmp_path)
    good, bad = good_samples(clip), bad_samples(clip)
    write_shard(str(tmp_path / "mixed.tar"), members({**good, **{k: parts for k, (_, parts) in bad.items()}}))
    infos = shard_of_images(tmp_path / "cut.tar", 4)
    (tmp_path / "cut.tar").write_bytes((tmp_path / "cut.tar").read_bytes()[:infos["s2.json"].offset])
    (tmp_path / "empty.tar").write_bytes(b"")

    runs, steps = {}, {}
    for workers in (0, 2):
        cfg.data.workers, cfg.data.index_dir = workers, str(tmp_path / f"index-{workers}")  # each builds its own
        runs[workers] = load(cfg, tokenizer, tmp_path, caplog)
        steps[workers] = steps_of(runs[workers][0], 5)
        runs[workers][0].close()
    (serial, serial_line), (parallel, parallel_line) = runs[0], runs[2]
    (one,), (two,) = serial.indexes, parallel.indexes
    assert one.arrays.keys() == two.arrays.keys() and all(np.array_equal(one.arrays[k], two.arrays[k])
                                                          for k in one.arrays)
    late = 2  # cut_png, cut_wav: bad past their headers, found when decoded
    assert len(serial.samples) == 32 + len(good) + 2 + late
    assert sum(serial.skipped.values()) >= len(bad) - late + 2
    assert {"corrupt_shard", "empty_shard"} <= set(serial.skipped)
    # The one load line, first cases included; only the elapsed time may differ.
    assert re.sub(r"\(\d+\.\d s\)", "", parallel_line) == re.sub(r"\(\d+\.\d s\)", "", serial_line)
    for (batches, plan, state), (want, want_plan, want_state) in zip(steps[2], steps[0]):
        assert batches_equal(batches, want) and plan.packs == want_plan.packs and state == want_state
    assert parallel.skipped == serial.skipped  # decode-time skips included, in the steps that met them


def test_negative_workers_are_refused(cfg, tokenizer):
    with pytest.raises(ValueError, match=r"^data.workers=-1: must be >= 0"):
        make_loader(cfg, tokenizer, workers=-1)


def steps_of(loader, count: int) -> list[tuple[list, object, dict]]:
    """(batches, plan, state_dict after) of the next ``count`` steps."""
    out = []
    for _ in range(count):
        batches = loader.next_step()
        out.append((batches, loader.last_plan, loader.state_dict()))
    return out


@pytest.mark.parametrize("data", [dict(global_batch_size=12), dict(global_batch_tokens=300),
                                  dict(packing=False, global_batch_size=12, micro_batch_size=3)])
def test_prefetch_gives_the_same_steps_and_positions(cfg, tokenizer, data):
    plain = make_loader(cfg, tokenizer, prefetch=False, **data)
    ahead = make_loader(cfg, tokenizer, prefetch=True, **data)
    expected = steps_of(plain, 6)  # past the end of the first epoch (32 samples)
    got = steps_of(ahead, 6)
    for (batches, plan, state), (want_batches, want_plan, want_state) in zip(got, expected):
        assert batches_equal(batches, want_batches)
        assert (plan and plan.packs) == (want_plan and want_plan.packs)
        assert state == want_state  # never the step made ahead
    assert expected[-1][2]["epoch"] >= 1
    ahead.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_prefetching_loader(cfg, tokenizer, workers):
    plain = make_loader(cfg, tokenizer, prefetch=False, global_batch_size=12)
    expected = steps_of(plain, 5)
    ahead = make_loader(cfg, tokenizer, global_batch_size=12, workers=workers)  # workers: 2 steps ahead
    steps_of(ahead, 3)
    state = ahead.state_dict()
    assert state == expected[2][2]
    resumed = make_loader(cfg, tokenizer, global_batch_size=12, workers=workers)
    resumed.load_state_dict(state)
    assert batches_equal(resumed.next_step(), expected[3][0])
    # Loading a state drops the step made ahead: step 4 is made again from step 2's position.
    resumed.load_state_dict(expected[2][2])
    assert [batches_equal(resumed.next_step(), expected[i][0]) for i in (3, 4)] == [True, True]
    for loader in (ahead, resumed):
        loader.close()


def test_close_stops_the_thread_and_keeps_the_position(cfg, tokenizer):
    plain = make_loader(cfg, tokenizer, prefetch=False, global_batch_size=12)
    expected = steps_of(plain, 3)
    before = set(threading.enumerate())
    loader = make_loader(cfg, tokenizer, global_batch_size=12)
    loader.next_step()
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("megaomni-prefetch")]
    assert len(started) == 1
    loader.close()
    assert not started[0].is_alive()
    assert loader.state_dict() == expected[0][2]
    # Made in the caller's thread now, from the steps handed out (not the one dropped).
    assert batches_equal(loader.next_step(), expected[1][0]) and loader.state_dict() == expected[1][2]


def test_prefetcher_makes_one_ahead_in_its_thread():
    made = []

    def make():
        made.append(threading.current_thread())
        if len(made) == 3:
            raise RuntimeError("third")
        return len(made)

    prefetcher = Prefetcher(make)
    assert [prefetcher.next(), prefetcher.next()] == [1, 2]
    with pytest.raises(RuntimeError, match="third"):  # an error surfaces at the item it belongs to
        prefetcher.next()
    prefetcher.close()  # nothing in flight after an error
    assert len(made) == 3 and made[0] is threading.main_thread()
    assert all(t is not threading.main_thread() and t.name.startswith("megaomni-prefetch") for t in made[1:])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_batches_are_pinned_on_cuda(cfg, tokenizer):
    cfg = copy.deepcopy(cfg)
    cfg.train.device = "cuda"
    loader = make_loader(cfg, tokenizer, global_batch_size=12)
    for _ in range(2):
        batches = loader.next_step()
        assert all(value.is_pinned() for b in batches for value in vars(b).values() if torch.is_tensor(value))
    loader.close()
