"""The sample index (megaomni/data/index.py): its rows are the decoded samples' sizes, at most 64
bytes a sample in memory; steps planned from it are those planned from every sample decoded up
front (the loader before it) for the same seed; it is rebuilt or refused when stale, resumes a
build cut short, and serves a data set on another file system (fsspec) alike."""

from __future__ import annotations

import copy
import logging
import shutil

import fsspec
import numpy as np
import pytest
import torch

from megaomni.data.batch_rules import rows_padded_alone
from megaomni.data.blend import SampleStream
from megaomni.data.collate import collate_packed
from megaomni.data.index import StaleIndex, build_index, open_index
from megaomni.data.loader import OmniDataLoader
from megaomni.data.sample import build_sample
from megaomni.data.shards import index_shards, list_shards
from megaomni.data.step_plan import over_budget, plan_step
from megaomni.errors import BadSample
from megaomni.flops import FlopModel
from tests.data.test_loader import batches_equal


def decoded_up_front(cfg, tokenizer) -> list:
    """Every usable sample of ``cfg.data.path`` decoded, in shard order: what the loader held."""
    samples = []
    for raw in index_shards(list_shards(cfg.data.path)):
        try:
            sample = build_sample(raw, tokenizer, cfg)
        except BadSample:
            continue
        if not (cfg.data.packing and over_budget(sample.sizes(), cfg.data)):
            samples.append(sample)
    return samples


def assert_in_memory_steps(cfg, tokenizer, dp: int, steps: int) -> None:
    """Each rank's first ``steps`` steps are those of the decoded samples' stream and plans."""
    decoded = decoded_up_front(cfg, tokenizer)
    loaders = [OmniDataLoader(cfg, tokenizer, dp_rank=rank, dp_size=dp) for rank in range(dp)]
    assert [s.key for s in loaders[0].samples] == [s.key for s in decoded]
    stream, flops = SampleStream([len(decoded)], [1.0], cfg.data.seed), FlopModel.from_config(cfg.model)
    for _ in range(steps):
        taken = stream.take(cfg.data.global_batch_size)
        want = plan_step([decoded[i].sizes() for i in taken], cfg.data, flops, dp, 1, 8,
                         per_row=rows_padded_alone(cfg))
        for rank, loader in enumerate(loaders):
            batches = loader.next_step()
            assert (loader.last_plan.packs, loader.last_plan.ranks) == (want.packs, want.ranks)
            expected = [collate_packed([decoded[taken[i]] for i in want.packs[p]], tokenizer.pad_id,
                                       want.row_lengths[p])
                        for p in want.ranks[rank]]
            assert batches_equal(batches, expected)
    for loader in loaders:
        loader.close()


def test_steps_are_those_of_the_samples_decoded_up_front(cfg, tokenizer):
    cfg.data.global_batch_size, cfg.data.max_tokens, cfg.data.seed = 12, 128, 3
    assert_in_memory_steps(cfg, tokenizer, dp=2, steps=4)  # 48 samples: into the second epoch


def test_rows_are_the_decoded_sizes_in_64_bytes(cfg, tokenizer, tmp_path):
    cfg.data.index_dir = str(tmp_path)
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    (index,) = loader.indexes
    assert all(loader.sizes(i) == sample.sizes() for i, sample in enumerate(loader.samples))
    assert sum(a.nbytes for a in index.arrays.values()) / len(index) <= 64
    again = open_index(cfg.data.path, tokenizer, cfg, None)  # read back, memory-mapped
    assert all(isinstance(a, np.memmap) and np.array_equal(a, index.arrays[k]) for k, a in again.arrays.items())
    loader.close()


def test_a_stale_index_is_rebuilt_or_refused(cfg, tokenizer, tmp_path, caplog):
    for shard in list_shards(cfg.data.path):
        shutil.copy(shard, tmp_path)
    cfg.data.path = str(tmp_path)

    def inline(fn, paths):
        return (fn(path, tokenizer, cfg) for path in paths)

    first = open_index(str(tmp_path), tokenizer, cfg, inline)
    with open(list_shards(str(tmp_path))[1], "ab") as f:
        f.write(b"\0" * 1024)  # a shard written again since
    cfg.data.index = "require"
    with pytest.raises(StaleIndex, match=r"shard \S+-00001.tar changed \(size \d+ -> \d+"):
        open_index(str(tmp_path), tokenizer, cfg, inline)
    other = copy.deepcopy(cfg)
    other.data.max_pixels = 2 * cfg.data.max_pixels
    with pytest.raises(StaleIndex, match=rf"data.max_pixels: {cfg.data.max_pixels} there, {other.data.max_pixels} now"):
        open_index(str(tmp_path), tokenizer, other, inline)
    cfg.data.index = "auto"
    with caplog.at_level(logging.INFO, logger="megaomni.data.index"):
        again = open_index(str(tmp_path), tokenizer, cfg, inline)
    assert "changed" in caplog.text and np.array_equal(again.arrays["tokens"], first.arrays["tokens"])


def test_a_build_cut_short_resumes(cfg, tokenizer, tmp_path):
    cfg.data.index_dir = str(tmp_path)
    shards = list_shards(cfg.data.path)
    done = []

    def stops_after_one(fn, paths):
        for path in paths:
            if done:
                raise KeyboardInterrupt
            done.append(path)
            yield fn(path, tokenizer, cfg)

    with pytest.raises(KeyboardInterrupt):
        build_index(cfg.data.path, tokenizer, cfg, stops_after_one)
    resumed = []
    index = build_index(cfg.data.path, tokenizer, cfg, lambda fn, paths: (resumed.append(p) or fn(p, tokenizer, cfg)
                                                                        for p in paths))
    assert done == shards[:1] and resumed == shards[1:]
    whole = build_index(cfg.data.path, tokenizer, cfg, lambda fn, paths: (fn(p, tokenizer, cfg) for p in paths),
                        write=False)
    assert all(np.array_equal(index.arrays[k], whole.arrays[k]) for k in whole.arrays)


def test_a_data_set_on_another_file_system(cfg, tokenizer, tmp_path):
    fs = fsspec.filesystem("memory")
    for shard in list_shards(cfg.data.path):
        fs.pipe(f"/megaomni-test/{shard.rsplit('/', 1)[1]}", open(shard, "rb").read())
    local = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    remote_cfg = copy.deepcopy(cfg)
    remote_cfg.data.path, remote_cfg.data.index_dir = "memory://megaomni-test", str(tmp_path)
    remote = OmniDataLoader(remote_cfg, tokenizer, dp_rank=0, dp_size=1)
    try:
        for _ in range(3):
            assert batches_equal(remote.next_step(), local.next_step())
    finally:
        fs.rm("/megaomni-test", recursive=True)
        local.close()
        remote.close()


def test_a_rank_without_encoders_reads_media_sizes_only(cfg, tokenizer):
    """A later pipeline stage's batches: the same text, positions and media sizes, no pixels."""
    full = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    sizes = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1, decode_media=False)
    for _ in range(2):
        for a, b in zip(full.next_step(), sizes.next_step()):
            assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "labels", "loss_mask",
                                                                           "position_ids", "cu_seqlens"))
            assert a.media.keys() == b.media.keys() and a.media
            for name, media in a.media.items():
                assert (media.rows, media.tokens) == (b.media[name].rows, b.media[name].tokens)
                assert torch.equal(media.sizes, b.media[name].sizes) and b.media[name].values.numel() == 0
    full.close()
    sizes.close()


def test_a_run_that_requires_its_indexes_checks_them_first(cfg, tokenizer, tmp_path):
    from megaomni.config import ConfigError
    from megaomni.validation import check_data

    cfg.data.index, cfg.data.index_dir, cfg.data.tokenizer = "require", str(tmp_path), tokenizer.path
    with pytest.raises(ConfigError, match=r"no index for these settings: none was built \(data.index=require\); "
                                          r"build it: python tools/index_data.py"):
        check_data(cfg)
    cfg.data.index = "auto"
    OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1).close()  # builds it
    cfg.data.index = "require"
    check_data(cfg)
