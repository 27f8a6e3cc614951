"""The joint policy against the megatron baseline, both priced by the simulator."""

from __future__ import annotations

import math
import random

import pytest

from megaomni.pipeline.costs import StepCosts
from megaomni.pipeline.joint_plan import joint_plan
from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.plan import ENC_B, ENC_F, check_plan
from megaomni.pipeline.simulate import simulate

from .helpers import ideal_rates, random_costs, uniform_costs


def equal_cost_step(seed: int, pp: int, vpp: int, num_micro: int, items: int, jitter: float = 0.3) -> StepCosts:
    """Each micro-batch's media (``items`` items) cost as much as its LLM forward, both +-jitter."""
    rng = random.Random(seed)
    llm = [[rng.uniform(1 - jitter, 1 + jitter) / vpp for _ in range(pp * vpp)] for _ in range(num_micro)]
    media = []
    for stages in llm:
        weights = [rng.uniform(1 - jitter, 1 + jitter) for _ in range(items)]
        media.append([sum(stages) * w / sum(weights) for w in weights])
    return StepCosts(llm, media, act_bytes=[0.05] * num_micro,
                     item_bytes=[[0.05 / items] * items for _ in range(num_micro)])


def encoder_flops(plan, costs) -> list[float]:
    """Encoder forward FLOPs per micro-batch, over all ranks."""
    return [sum(costs.flops(ENC_F, m, share=plan.shares[m][r]) for r in range(plan.pp))
            for m in range(plan.num_micro)]


# Observed minimum over 20 seeds of these settings: pp=2: 1.32x, pp=4: 2.11x (the ideal, with
# every rank busy all step: 1.5x and 2.5x). The thresholds leave room for planner tweaks.
MARGIN = {2: 1.25, 4: 1.9}


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("vpp", [1, 2])
@pytest.mark.parametrize("num_micro", [8, 12])
@pytest.mark.parametrize("per_rank", [1, 2])
@pytest.mark.parametrize("latency", [0.0, 0.01])
def test_joint_beats_megatron(pp, vpp, num_micro, per_rank, latency):
    rates = ideal_rates(latency=latency, bytes_per_s=10.0)
    for seed in range(2):
        costs = equal_cost_step(seed, pp, vpp, num_micro, per_rank * pp)
        baseline = megatron_plan(pp, vpp, [len(it) for it in costs.items])
        joint = joint_plan(pp, vpp, costs, rates)
        check_plan(joint)
        speedup = simulate(baseline, costs, rates).step_time / simulate(joint, costs, rates).step_time
        assert speedup >= MARGIN[pp], (seed, speedup)
        assert encoder_flops(joint, costs) == pytest.approx(encoder_flops(baseline, costs), rel=1e-12)


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("num_micro", [8, 12, 16])
def test_joint_fills_every_bubble_on_uniform_costs(pp, num_micro):
    """Uniform stages (forward f, backward 2f) and pp equal items per micro-batch costing as much as
    the LLM: megatron's rank 0 runs (1 + pp) 3f per micro-batch without a pause; the joint plan
    spreads the same work evenly and leaves no bubble: 6f per micro-batch."""
    f = 1.0
    costs = uniform_costs(pp, 1, num_micro, f, items=[[f] * pp for _ in range(num_micro)])
    rates = ideal_rates()
    baseline = simulate(megatron_plan(pp, 1, [pp] * num_micro), costs, rates)
    joint = simulate(joint_plan(pp, 1, costs, rates), costs, rates)
    assert math.isclose(baseline.step_time, (1 + pp) * 3 * f * num_micro, rel_tol=1e-9)
    assert math.isclose(joint.step_time, 6 * f * num_micro, rel_tol=1e-9)
    assert joint.bubble == pytest.approx(0.0, abs=1e-9)
    assert sum(joint.busy()) == pytest.approx(sum(baseline.busy()), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_joint_runs_only_its_shares(seed):
    """ENC_F / ENC_B only on ranks given a share of that micro-batch, once each; shares partition
    the items; the encoder FLOPs (and, with no floors, all compute) match megatron's."""
    rng = random.Random(1000 + seed)
    pp = rng.choice([2, 4])
    vpp = rng.choice([1, 2])
    num_micro = rng.choice([pp, 2 * pp, 12])
    counts = [rng.randint(0, 4) for _ in range(num_micro)]
    costs = random_costs(rng, pp, vpp, counts)
    rates = ideal_rates(latency=0.01, bytes_per_s=5.0)
    joint = joint_plan(pp, vpp, costs, rates)
    baseline = megatron_plan(pp, vpp, counts)
    for m, n in enumerate(counts):
        assert sorted(i for share in joint.shares[m] for i in share) == list(range(n))
    for rank, actions in enumerate(joint.actions):
        for kind in (ENC_F, ENC_B):
            micros = [m for a in actions if a.kind == kind for m in a.micros]
            assert sorted(micros) == [m for m in range(num_micro) if joint.shares[m][rank]]
    assert encoder_flops(joint, costs) == pytest.approx(encoder_flops(baseline, costs), rel=1e-12)
    busy_joint, busy_base = simulate(joint, costs, rates).busy(), simulate(baseline, costs, rates).busy()
    assert sum(busy_joint) == pytest.approx(sum(busy_base), rel=1e-9)


def test_joint_spreads_single_items_over_ranks():
    """One item per micro-batch: shares carry their load over micro-batches, so the items still
    spread over every rank (split per micro-batch alone, rank pp-1 got them all: no speed-up)."""
    pp, num_micro, f = 4, 8, 1.0
    costs = uniform_costs(pp, 1, num_micro, f, items=[[pp * f] for _ in range(num_micro)])
    rates = ideal_rates()
    baseline = simulate(megatron_plan(pp, 1, [1] * num_micro), costs, rates)
    joint = simulate(joint_plan(pp, 1, costs, rates), costs, rates)
    assert baseline.step_time / joint.step_time >= 1.2
    plan = joint_plan(pp, 1, costs, rates)
    assert {r for m in range(num_micro) for r in range(pp) if plan.shares[m][r]} == set(range(pp))


def test_joint_never_slower_than_baseline_on_its_costs():
    """The baseline's placement is one of the candidates: on the planner's own costs, joint is
    never slower (a micro-batch with one huge image cannot spread)."""
    rng = random.Random(368)
    for _ in range(40):
        pp = rng.choice([2, 4])
        num_micro = rng.randint(pp, 8)
        costs = random_costs(rng, pp, 1, [rng.randint(0, 3) for _ in range(num_micro)])
        rates = ideal_rates()
        base = simulate(megatron_plan(pp, 1, [len(i) for i in costs.items]), costs, rates).step_time
        assert simulate(joint_plan(pp, 1, costs, rates), costs, rates).step_time <= base * (1 + 1e-12)


@pytest.mark.parametrize("pp", [2, 4])
def test_joint_keeps_micro_batches_whole_when_encoder_calls_have_a_floor(pp):
    """Measured on a GPU, an encoder call has a host floor (launching ~40 layers) whatever its
    size: with that floor priced in, splitting a micro-batch's media over ranks doubles
    the floors and the planner keeps each micro-batch's media on one rank; without it, it
    splits. Either way it beats the baseline on these costs. (One micro-batch per encoder call
    here; grouping is the next test's.)"""
    costs = equal_cost_step(0, pp, 1, 12, 2 * pp)
    for floor, whole in ((0.0, False), (2.0, True)):  # floors of >= half a micro-batch's encoder forward
        rates = ideal_rates()
        rates.floor.update({ENC_F: floor, ENC_B: floor})
        joint = joint_plan(pp, 1, costs, rates, fallback=False, call_size=1)
        check_plan(joint)
        busy = [sum(1 for share in shares if share) for shares in joint.shares]
        assert (max(busy) == 1) == whole, (floor, busy)
        baseline = megatron_plan(pp, 1, [len(it) for it in costs.items])
        assert simulate(joint, costs, rates).step_time < simulate(baseline, costs, rates).step_time


@pytest.mark.parametrize("pp", [2, 4])
def test_joint_groups_micro_batches_into_encoder_calls_when_calls_have_a_floor(pp):
    """With a floor per encoder call above its compute (host-bound, as measured on the GPU: the
    media here cost 1-2 units a micro-batch), one call over several micro-batches' shares pays it once:
    the planner groups them and is faster than with one micro-batch per call; without floors
    there is nothing to gain and every call stays single. Every share is still encoded and
    back-propagated exactly once."""
    costs = equal_cost_step(0, pp, 1, 12, 2 * pp)
    for floor in (0.0, 2.0 * pp):
        rates = ideal_rates()
        rates.floor.update({ENC_F: floor, ENC_B: floor})
        grouped = joint_plan(pp, 1, costs, rates, fallback=False)
        single = joint_plan(pp, 1, costs, rates, fallback=False, call_size=1)
        check_plan(grouped)
        calls = [a for actions in grouped.actions for a in actions if a.kind == ENC_F]
        t_grouped = simulate(grouped, costs, rates).step_time
        t_single = simulate(single, costs, rates).step_time
        if floor:
            assert max(len(a.micros) for a in calls) > 1
            assert t_grouped < t_single * 0.97, (t_grouped, t_single)
        else:
            assert t_grouped == pytest.approx(t_single, rel=1e-12)
        for rank, actions in enumerate(grouped.actions):
            for kind in (ENC_F, ENC_B):
                micros = sorted(m for a in actions if a.kind == kind for m in a.micros)
                assert micros == [m for m in range(12) if grouped.shares[m][rank]]
