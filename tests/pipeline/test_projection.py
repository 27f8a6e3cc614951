"""benchmarks/pipeline_projection.py's core (``project``) on a few synthetic micro-batches."""

from __future__ import annotations

import math
import os
import random

import pytest

from megaomni.config import load_config
from megaomni.pipeline.costs import Rates
from megaomni.pipeline.plan import COMPUTE
from megaomni.pipeline.shares import Item
from tests.conftest import ROOT, load_script


@pytest.fixture(scope="module")
def projection():
    return load_script("benchmarks/pipeline_projection.py")


@pytest.fixture(scope="module")
def cfg():
    return load_config(os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml"), ["model.llm.num_layers=8"])


def encoder_heavy_pool(n: int = 12, seed: int = 0) -> list[dict]:
    """Packed 128-token rows with a few large images and clips: encoders cost more than the LLM."""
    rng = random.Random(seed)
    pool = []
    for _ in range(n):
        lens = [rng.randint(20, 60) for _ in range(3)]
        items = [Item("vision", i, rng.choice([256, 400, 576]), 16) for i in range(rng.randint(2, 4))]
        items += [Item("audio", i, rng.randint(100, 400), 25) for i in range(rng.randint(0, 2))]
        pool.append({"seq_lens": lens, "tokens": sum(lens), "items": items})
    return pool


# A slow machine with a free link: compute dominates, so the comparison is about the schedules.
RATES = Rates(per_flop={k: 1e-9 for k in COMPUTE}, floor={k: 0.0 for k in COMPUTE}, bytes_per_s=1e15, latency=0.0)


def test_projection_core(projection, cfg):
    pool = encoder_heavy_pool()
    layouts = projection.parse_layouts(["8/1/2", "16/1/4"], "auto")
    assert [(lay.dp, lay.micro) for lay in layouts] == [(4, 8), (4, 8)]
    rows = projection.project(pool, layouts, cfg, 192, RATES, bytes_per_value=4, steps=2, seed=0, workers=1)
    assert len(rows) == 2
    for row in rows:
        for policy in projection.POLICIES:
            fig = row[policy]
            for key in ("step_time_s", "tokens_per_s", "bubble", "bubble_with_dp_wait", "grad_allreduce_s",
                        "mean_replica_step_time_s", "step_time_with_allreduce_s"):
                assert math.isfinite(fig[key]), (row["pp"], policy, key, fig[key])
            assert fig["step_time_s"] > 0 and fig["tokens_per_s"] > 0
            assert 0 <= fig["bubble"] < 1 and fig["bubble"] <= fig["bubble_with_dp_wait"] + 1e-9
            for step in fig["steps"]:
                assert len(step["replica_step_times_s"]) == row["dp"]
                assert step["step_time_s"] == max(step["replica_step_times_s"])
        # Encoder-heavy: spreading the encoders over the pipeline must not lose to stage 0 alone.
        assert row["joint"]["step_time_s"] <= row["megatron"]["step_time_s"] * 1.05, row
        assert math.isfinite(row["speedup"]) and row["speedup"] > 0
    # The megatron policy's split gives stage 0 (which also encodes) fewer LLM layers.
    assert rows[0]["megatron"]["stage_layers"][0] < rows[0]["joint"]["stage_layers"][0]


def test_replica_max_at_least_single_replica(projection, cfg):
    pool = encoder_heavy_pool(seed=1)
    single, = projection.project(pool, projection.parse_layouts(["2/1/2"], "auto"), cfg, 192, RATES,
                                 bytes_per_value=4, steps=2, seed=3, workers=1)
    many, = projection.project(pool, projection.parse_layouts(["8/1/2"], "auto"), cfg, 192, RATES,
                               bytes_per_value=4, steps=2, seed=3, workers=1)
    assert single["dp"] == 1 and many["dp"] == 4
    for policy in projection.POLICIES:
        for one, four in zip(single[policy]["steps"], many[policy]["steps"]):
            # Replica 0 draws the same micro-batches whatever dp is.
            assert four["replica_step_times_s"][0] == pytest.approx(one["step_time_s"])
            assert four["step_time_s"] >= one["step_time_s"]
        assert many[policy]["step_time_s"] >= single[policy]["step_time_s"]
        # Four replicas: four times the tokens in a step not four times as long.
        assert many[policy]["tokens_per_s"] > single[policy]["tokens_per_s"]
    assert single["megatron"]["grad_allreduce_s"] == 0.0  # dp = 1: nothing to reduce for stage-0 encoders
    assert single["joint"]["grad_allreduce_s"] > 0.0  # joint: encoder replicas on both pipeline ranks
