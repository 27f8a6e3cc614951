"""The stage split (encoders and LLM layers seen together) and the context-parallel chunking."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from megaomni.config import load_config
from megaomni.ops.context_parallel import cp_positions
from megaomni.parallel.stages import balanced_split, layers_per_stage, megatron_layout


def _brute_force(costs, stages, first_extra, last_extra):
    """Smallest largest-stage cost over every split into contiguous groups of >= 1 layer."""
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = (0, *cuts, len(costs))
        loads = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
        loads[0] += first_extra
        loads[-1] += last_extra
        best = max(loads) if best is None else min(best, max(loads))
    return best


@pytest.mark.parametrize("seed", range(30))
def test_balanced_split_is_optimal(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    stages = rng.randint(1, n)
    costs = [rng.randint(1, 20) for _ in range(n)]
    first, last = rng.randint(0, 40), rng.randint(0, 40)
    counts = balanced_split(costs, stages, first, last)
    assert len(counts) == stages and all(c >= 1 for c in counts) and sum(counts) == n
    bounds = [0, *itertools.accumulate(counts)]
    loads = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
    loads[0] += first
    loads[-1] += last
    assert max(loads) == _brute_force(costs, stages, first, last)


def test_encoders_weigh_on_the_first_stage():
    cfg = load_config(None, ["model.llm.num_layers=8", "parallel.pp=2"])
    counts = layers_per_stage(cfg, vocab_size=128)
    assert sum(counts) == 8 and counts[0] < counts[1]  # the encoders take the first stage's room
    no_media = load_config(None, ["model.llm.num_layers=8", "parallel.pp=2", "model.vision.enabled=false",
                                  "model.audio.enabled=false"])
    assert layers_per_stage(no_media, vocab_size=128)[0] >= counts[0]
    assert layers_per_stage(load_config(None, ["model.llm.num_layers=8", "parallel.pp=2",
                                               "pipeline.layers_per_stage=[3,5]"]), 128) == [3, 5]


def test_megatron_layout_places_embedding_and_loss():
    assert megatron_layout([1, 2]) == [["embedding", "decoder"], ["decoder", "decoder", "loss"]]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_cp_chunks_partition_the_sequence_and_balance_causal_work(cp):
    seq = 8 * cp
    parts = [cp_positions(seq, cp, r) for r in range(cp)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(seq))
    # Causal work of a token is its position + 1: every rank gets the same share.
    work = {int((p + 1).sum()) for p in parts}
    assert len(work) == 1
    with pytest.raises(ValueError, match="not divisible by 2\\*cp"):
        cp_positions(seq + 1, cp, 0)
