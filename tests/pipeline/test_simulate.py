"""The simulator against closed forms on uniform costs."""

from __future__ import annotations

import math

import pytest

from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F
from megaomni.pipeline.simulate import simulate

from .helpers import ideal_rates, uniform_costs, valid_groups

F = 1.7  # a rank's forward of one micro-batch; its backward is BACKWARD_RATIO (2) times that
REL = 1e-9


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("num_micro", [1, 2, 4, 5, 8, 16])
def test_one_f_one_b_closed_form(pp, num_micro):
    """1F1B with a free link: (M + pp - 1) (f + b), bubble (pp - 1) / (M + pp - 1)."""
    timeline = simulate(megatron_plan(pp, 1, [0] * num_micro), uniform_costs(pp, 1, num_micro, F), ideal_rates())
    assert math.isclose(timeline.step_time, (num_micro + pp - 1) * 3 * F, rel_tol=REL)
    assert math.isclose(timeline.bubble, (pp - 1) / (num_micro + pp - 1), rel_tol=REL, abs_tol=1e-12)
    assert all(math.isclose(b, num_micro * 3 * F, rel_tol=REL) for b in timeline.busy())


# Interleaved: each of a rank's vpp chunks costs f / vpp forward, so the warm-up and cool-down
# each cost (pp - 1) chunk-steps of (f + b) / vpp, and the step takes
# (M vpp + pp - 1) (f + b) / vpp (megatron-core's / Narayanan et al.'s bubble (pp - 1) / (M vpp)
# of the ideal M (f + b)). With zero latency this holds exactly for every group size megatron-core
# accepts (group in [pp, M], last group whole or >= pp); the cases it rejects are not tested
# (some are slower, e.g. pp=2, vpp=2, M=3, group=2, others deadlock, e.g. group < pp).
INTERLEAVED = [(pp, vpp, m, g) for pp in (2, 3, 4) for vpp in (2, 3) for m in (pp, 5, 8, 12) if m >= pp
               for g in valid_groups(pp, m)]


@pytest.mark.parametrize("pp,vpp,num_micro,group", INTERLEAVED)
def test_interleaved_closed_form(pp, vpp, num_micro, group):
    plan = megatron_plan(pp, vpp, [0] * num_micro, group)
    timeline = simulate(plan, uniform_costs(pp, vpp, num_micro, F), ideal_rates())
    steps = num_micro * vpp + pp - 1
    assert math.isclose(timeline.step_time, steps * 3 * F / vpp, rel_tol=REL)
    assert math.isclose(timeline.bubble, (pp - 1) / steps, rel_tol=REL)


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_link_cost_on_the_critical_path(pp):
    """One micro-batch crosses pp - 1 links forward and back: each hop costs latency + bytes / rate.
    Its media (cost e) are encoded on rank 0 before the first stage and back-propagated after it."""
    latency, act_bytes, rate, e = 0.25, 3.0, 2.0, 0.8
    costs = uniform_costs(pp, 1, 1, F, items=[[e / 2, e / 2]], act_bytes=act_bytes, item_bytes=1e9)
    timeline = simulate(megatron_plan(pp, 1, [2]), costs, ideal_rates(latency=latency, bytes_per_s=rate))
    hop = latency + act_bytes / rate
    assert math.isclose(timeline.step_time, 3 * e + pp * 3 * F + 2 * (pp - 1) * hop, rel_tol=REL)
    kinds = [(ev.rank, ev.kind) for ev in sorted(timeline.events, key=lambda ev: ev.start)]
    assert kinds[0] == (0, ENC_F) and kinds[-1] == (0, ENC_B)


@pytest.mark.parametrize("floor, forward, backward", [(2.5, 2.5, 2 * F), (4.0, 4.0, 4.0), (0.1, F, 2 * F)])
def test_floors_and_event_times(floor, forward, backward):
    """An action takes max(floor, its FLOPs' time); events never overlap on a rank and end by
    the step."""
    pp, num_micro = 2, 4
    timeline = simulate(megatron_plan(pp, 1, [0] * num_micro), uniform_costs(pp, 1, num_micro, F),
                        ideal_rates(floor=floor))
    assert math.isclose(timeline.step_time, (num_micro + pp - 1) * (forward + backward), rel_tol=REL)
    for rank in range(pp):
        events = sorted((e for e in timeline.events if e.rank == rank), key=lambda e: e.start)
        assert [e.kind for e in events].count(LLM_F) == num_micro
        assert [e.kind for e in events].count(LLM_B) == num_micro
        assert all(a.end <= b.start + 1e-12 for a, b in zip(events, events[1:]))
        assert events[-1].end <= timeline.step_time + 1e-12
