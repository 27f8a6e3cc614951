"""Shares of a real ``Batch``: inputs cut per share and outputs put back in batch order."""

from __future__ import annotations

import random

import pytest
import torch

from megaomni.data.batch import Batch
from megaomni.media.audio import audio_tokens
from megaomni.media.vision import vision_tokens
from megaomni.pipeline.shares import assemble, media_items, share_inputs, share_outputs, split_shares, whole_shares
from tests.media_views import (
    audio_features,
    audio_fields,
    audio_lengths,
    batch_image_times,
    image_grids,
    image_patches,
    make_media,
    vision_fields,
)

MERGE, DOWNSAMPLE = 2, 4
GRIDS = [(2, 4), (4, 4), (2, 2), (6, 2), (4, 2)]
CLIPS = [5, 3, 8, 13]


def make_batch(seed: int, with_times: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    grids = torch.tensor(GRIDS, dtype=torch.long)
    patches = torch.randn(int(grids.prod(-1).sum()), 12, generator=g)
    lengths = torch.tensor(CLIPS, dtype=torch.long)
    tokens = torch.randint(0, 100, (2, 16), generator=g)
    return Batch(tokens=tokens, labels=tokens.clone(), loss_mask=torch.ones(2, 16),
                 position_ids=torch.arange(16).expand(2, -1),
                 media=make_media(image_patches=patches, image_grids=grids,
                                  image_times=torch.randint(0, 7, (len(GRIDS),), generator=g) if with_times else None,
                                  audio_features=torch.randn(int(lengths.sum()), 8, generator=g), audio_lengths=lengths,
                                  merge=MERGE, downsample=DOWNSAMPLE))


def random_split(rng: random.Random, n: int, pp: int) -> list[tuple[int, ...]]:
    owners = [rng.randrange(pp) for _ in range(n)]
    return [tuple(i for i in range(n) if owners[i] == r) for r in range(pp)]


def test_media_items():
    items = media_items(make_batch(0).media)
    assert [(it.modality, it.index) for it in items] == (
        [("vision", i) for i in range(len(GRIDS))] + [("audio", i) for i in range(len(CLIPS))])
    assert [it.size for it in items] == [h * w for h, w in GRIDS] + CLIPS
    assert [it.outputs for it in items] == ([vision_tokens(h, w, MERGE) for h, w in GRIDS]
                                            + [audio_tokens(n, DOWNSAMPLE) for n in CLIPS])
    assert [it.outputs for it in items[:3]] == [2, 4, 1] and items[-1].outputs == 4  # ceil(13 / 4)


@pytest.mark.parametrize("seed", range(12))
def test_share_inputs_reassemble_the_batch(seed):
    rng = random.Random(seed)
    batch = make_batch(seed, with_times=seed % 3 != 0)
    items = media_items(batch.media)
    shares = random_split(rng, len(items), rng.choice([1, 2, 3, 4]))
    images, clips = {}, {}  # item index -> its rows / grid / time, cut from each share's inputs
    for share in shares:
        inputs = share_inputs(batch.media, items, share)
        modalities = {items[i].modality for i in share}
        assert set(inputs) == modalities
        if "vision" in inputs:
            patches, grids, times = vision_fields(inputs["vision"])
            indices = [items[i].index for i in share if items[i].modality == "vision"]
            assert grids.tolist() == [list(GRIDS[i]) for i in indices]
            assert patches.shape[0] == int(grids.prod(-1).sum())
            assert (times is None) == (batch_image_times(batch) is None)
            for k, rows in enumerate(patches.split(grids.prod(-1).tolist())):
                images[indices[k]] = (rows, grids[k], None if times is None else times[k])
        if "audio" in inputs:
            features, lengths = audio_fields(inputs["audio"])
            indices = [items[i].index for i in share if items[i].modality == "audio"]
            assert lengths.tolist() == [CLIPS[i] for i in indices]
            for k, rows in enumerate(features.split(lengths.tolist())):
                clips[indices[k]] = rows
    assert sorted(images) == list(range(len(GRIDS))) and sorted(clips) == list(range(len(CLIPS)))
    assert torch.equal(torch.cat([images[i][0] for i in range(len(GRIDS))]), image_patches(batch))
    assert torch.equal(torch.stack([images[i][1] for i in range(len(GRIDS))]), image_grids(batch))
    if batch_image_times(batch) is not None:
        assert torch.equal(torch.stack([images[i][2] for i in range(len(GRIDS))]), batch_image_times(batch))
    assert torch.equal(torch.cat([clips[i] for i in range(len(CLIPS))]), audio_features(batch))


def test_share_inputs_of_everything_is_the_batch():
    batch = make_batch(1)
    items = media_items(batch.media)
    inputs = share_inputs(batch.media, items, tuple(range(len(items))))
    assert torch.equal(vision_fields(inputs["vision"])[0], image_patches(batch))
    assert torch.equal(vision_fields(inputs["vision"])[1], image_grids(batch))
    assert torch.equal(vision_fields(inputs["vision"])[2], batch_image_times(batch))
    assert torch.equal(audio_fields(inputs["audio"])[0], audio_features(batch))
    assert torch.equal(audio_fields(inputs["audio"])[1], audio_lengths(batch))
    assert share_inputs(batch.media, items, ()) == {}


@pytest.mark.parametrize("seed", range(12))
def test_assemble_puts_rows_in_batch_order_and_is_differentiable(seed):
    rng = random.Random(seed)
    items = media_items(make_batch(seed).media)
    shares = random_split(rng, len(items), rng.choice([1, 2, 3, 4]))
    width = 3
    leaves, outputs = [], []
    for share in shares:
        counts = share_outputs(items, share)
        out = {}
        for name, rows in counts.items():
            # fake encoder output: every row of an item holds its index (and its row within it)
            values = [[float(items[i].index), float(j), 0.0] for i in share if items[i].modality == name
                      for j in range(items[i].outputs)]
            assert len(values) == rows
            leaf = torch.tensor(values, requires_grad=True)
            leaves.append(leaf)
            out[name] = leaf * 1.0  # a non-leaf, as an encoder's output is
        outputs.append(out)
    result = assemble(items, shares, outputs)
    assert set(result) == {"vision", "audio"}
    for name in result:
        ordered = [it for it in items if it.modality == name]
        want = torch.tensor([[float(it.index), float(j), 0.0] for it in ordered for j in range(it.outputs)])
        assert torch.equal(result[name].detach(), want)
    # Gradients reach every share's rows, each row getting exactly its own upstream gradient.
    weights = {name: torch.randn(t.shape[0], width) for name, t in result.items()}
    sum((result[name] * weights[name]).sum() for name in result).backward()
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    # Exact: the gradient of each leaf is the weight rows of its items, in the leaf's order.
    k = 0
    for share in shares:
        for name in share_outputs(items, share):
            starts, offset = {}, 0  # first row of each item of this modality in batch order
            for it in items:
                if it.modality == name:
                    starts[it.index] = offset
                    offset += it.outputs
            rows = [starts[items[i].index] + j for i in share if items[i].modality == name
                    for j in range(items[i].outputs)]
            assert torch.equal(leaves[k].grad, weights[name][rows])
            k += 1


def test_share_outputs():
    items = media_items(make_batch(0).media)
    everything = share_outputs(items, tuple(range(len(items))))
    assert everything == {"vision": sum(vision_tokens(h, w, MERGE) for h, w in GRIDS),
                          "audio": sum(audio_tokens(n, DOWNSAMPLE) for n in CLIPS)}
    assert share_outputs(items, ()) == {}


@pytest.mark.parametrize("seed", range(50))
def test_split_shares_balances(seed):
    rng = random.Random(seed)
    costs = [rng.uniform(0.01, 5.0) for _ in range(rng.randint(0, 20))]
    pp = rng.randint(1, 6)
    weights = [rng.choice([0.0, 1.0, 1.0]) for _ in range(pp)]
    weights[rng.randrange(pp)] = 1.0
    shares = split_shares(costs, weights)
    assert len(shares) == pp
    assert sorted(i for s in shares for i in s) == list(range(len(costs)))
    assert all(list(s) == sorted(s) for s in shares)
    assert all(not shares[r] for r in range(pp) if weights[r] == 0)
    loads = [sum(costs[i] for i in shares[r]) for r in range(pp) if weights[r] > 0]
    assert max(loads) <= min(loads) + max(costs, default=0.0) + 1e-12


@pytest.mark.parametrize("seed", range(30))
def test_split_shares_weighted(seed):
    """Unequal weights: loads per unit weight differ by at most the largest item per unit weight."""
    rng = random.Random(seed)
    costs = [rng.uniform(0.01, 5.0) for _ in range(rng.randint(1, 20))]
    weights = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(rng.randint(2, 5))]
    weights[0] = 1.0
    shares = split_shares(costs, weights)
    assert all(not shares[r] for r, w in enumerate(weights) if w == 0)
    live = [r for r, w in enumerate(weights) if w > 0]
    scaled = [sum(costs[i] for i in shares[r]) / weights[r] for r in live]
    assert max(scaled) <= min(scaled) + max(costs) / min(weights[r] for r in live) + 1e-12


def test_split_shares_ties_go_to_the_later_rank():
    assert split_shares([1.0], [1.0, 1.0, 1.0]) == [(), (), (0,)]
    assert split_shares([3.0, 1.0, 2.0], [1.0, 1.0]) == [(1, 2), (0,)]
    assert split_shares([1.0, 1.0], [1.0, 0.0, 1.0, 0.0]) == [(1,), (), (0,), ()]


def test_whole_shares_keep_each_micro_batch_on_one_rank_and_balance_over_the_step():
    loads = [0.0, 0.0]
    steps = [whole_shares(costs, [1.0, 1.0], loads) for costs in ([3.0, 1.0], [2.0], [], [1.0, 1.0, 1.0])]
    # 4 -> rank 1 (tie: the later rank), 2 -> rank 0, nothing, 3 -> rank 0 (load 2 < 4).
    assert steps == [[(), (0, 1)], [(0,), ()], [(), ()], [(0, 1, 2), ()]]
    assert loads == [5.0, 4.0]
