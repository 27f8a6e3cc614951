"""``check_plan`` / ``first_blocked``: every planner's plans pass, broken hand-made plans fail
with a message that says where."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from megaomni.pipeline.joint_plan import joint_plan
from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.plan import (ENC_B, ENC_F, LLM_B, LLM_F, RECV, SEND, Action, Plan, PlanError,
                                    check_plan, first_blocked)
from megaomni.pipeline.simulate import simulate

from .helpers import ideal_rates, random_costs, valid_groups


def random_step(seed: int):
    rng = random.Random(seed)
    pp = rng.choice([1, 2, 4])
    vpp = rng.choice([1, 2]) if pp > 1 else 1
    num_micro = rng.randint(pp, 12)
    group = rng.choice(valid_groups(pp, num_micro)) if vpp > 1 else 0
    counts = [rng.randint(0, 4) for _ in range(num_micro)]
    counts[rng.randrange(num_micro)] = 0  # always at least one micro-batch without media
    costs = random_costs(rng, pp, vpp, counts)
    rates = ideal_rates(latency=rng.choice([0.0, 0.01]), bytes_per_s=rng.choice([1.0, 10.0, 1e300]),
                        floor=rng.choice([0.0, 0.01]))
    return pp, vpp, group, counts, costs, rates


def assert_complete(plan: Plan, counts: list[int]) -> None:
    """Every (micro, stage) forward and backward once, on its rank; every share encoded and
    back-propagated once, on the rank that owns it; shares partition each micro-batch's items."""
    for m, n in enumerate(counts):
        owned = sorted(i for share in plan.shares[m] for i in share)
        assert owned == list(range(n))
    for rank, actions in enumerate(plan.actions):
        llm = Counter((a.kind, a.micro, a.stage) for a in actions if a.kind in (LLM_F, LLM_B))
        want = {(k, m, s): 1 for k in (LLM_F, LLM_B) for m in range(plan.num_micro)
                for s in range(plan.stages) if plan.rank_of(s) == rank}
        assert dict(llm) == want
        for kind in (ENC_F, ENC_B):
            ran = Counter(m for a in actions if a.kind == kind for m in a.micros)
            assert dict(ran) == {m: 1 for m in range(plan.num_micro) if plan.shares[m][rank]}


@pytest.mark.parametrize("seed", range(60))
def test_planners_make_valid_plans(seed):
    pp, vpp, group, counts, costs, rates = random_step(seed)
    for plan in (megatron_plan(pp, vpp, counts, group), joint_plan(pp, vpp, costs, rates, group)):
        check_plan(plan)
        assert first_blocked(plan) is None
        assert_complete(plan, counts)
        simulate(plan, costs, rates)  # runs to the end (raises PlanError on a deadlock)


def two_rank_plan(actions: list[list[Action]], num_micro: int = 1) -> Plan:
    return Plan("hand", 2, 1, num_micro, actions, [[(), ()] for _ in range(num_micro)])


def send(m, name, which, peer):
    return Action(SEND, m, key=(name, m, which), peer=peer)


def recv(m, name, which, peer):
    return Action(RECV, m, key=(name, m, which), peer=peer)


def test_hand_made_valid_plan_passes():
    plan = two_rank_plan([
        [Action(LLM_F, 0, 0), send(0, "act", 0, 1), recv(0, "grad", 1, 1), Action(LLM_B, 0, 0)],
        [recv(0, "act", 0, 0), Action(LLM_F, 0, 1), Action(LLM_B, 0, 1), send(0, "grad", 1, 0)],
    ])
    check_plan(plan)


def test_forward_before_its_receive_is_rejected():
    plan = two_rank_plan([
        [Action(LLM_F, 0, 0), send(0, "act", 0, 1), recv(0, "grad", 1, 1), Action(LLM_B, 0, 0)],
        [Action(LLM_F, 0, 1), recv(0, "act", 0, 0), Action(LLM_B, 0, 1), send(0, "grad", 1, 0)],
    ])
    with pytest.raises(PlanError) as error:
        check_plan(plan)
    message = str(error.value)
    assert "rank 1" in message and "action 0" in message and str(("act", 0, 0)) in message


def test_backward_without_its_forward_is_rejected():
    plan = two_rank_plan([
        [Action(LLM_F, 0, 0), send(0, "act", 0, 1), recv(0, "grad", 1, 1), Action(LLM_B, 0, 0)],
        [recv(0, "act", 0, 0), Action(LLM_B, 0, 1), Action(LLM_F, 0, 1), send(0, "grad", 1, 0)],
    ])
    with pytest.raises(PlanError, match=r"rank 1, action 1 .*\('ran', 0, 1\)"):
        check_plan(plan)


def test_receiving_out_of_order_is_rejected():
    # rank 0 sends act(0) then act(1); rank 1 receives act(1) first: no rank waits on anything
    # (first_blocked counts messages), but the values would be swapped.
    plan = two_rank_plan([
        [Action(LLM_F, 0, 0), send(0, "act", 0, 1), Action(LLM_F, 1, 0), send(1, "act", 0, 1),
         recv(0, "grad", 1, 1), Action(LLM_B, 0, 0), recv(1, "grad", 1, 1), Action(LLM_B, 1, 0)],
        [recv(1, "act", 0, 0), recv(0, "act", 0, 0), Action(LLM_F, 0, 1), Action(LLM_B, 0, 1),
         send(0, "grad", 1, 0), Action(LLM_F, 1, 1), Action(LLM_B, 1, 1), send(1, "grad", 1, 0)],
    ], num_micro=2)
    assert first_blocked(plan) is None
    with pytest.raises(PlanError, match="order sent") as error:
        check_plan(plan)
    assert "rank 0" in str(error.value) and "rank 1" in str(error.value)


def test_receive_without_send_is_rejected():
    plan = two_rank_plan([
        [Action(LLM_F, 0, 0), recv(0, "grad", 1, 1), Action(LLM_B, 0, 0)],
        [recv(0, "act", 0, 0), Action(LLM_F, 0, 1), Action(LLM_B, 0, 1), send(0, "grad", 1, 0)],
    ])
    with pytest.raises(PlanError, match="sends nothing"):
        check_plan(plan)


def test_deadlock_is_rejected():
    # Both ranks receive before they send: each waits for the other forever.
    plan = two_rank_plan([
        [recv(0, "grad", 1, 1), Action(LLM_F, 0, 0), send(0, "act", 0, 1), Action(LLM_B, 0, 0)],
        [recv(0, "act", 0, 0), Action(LLM_F, 0, 1), Action(LLM_B, 0, 1), send(0, "grad", 1, 0)],
    ])
    assert first_blocked(plan) == (0, 0)
    with pytest.raises(PlanError, match=r"rank 0, action 0 .*deadlocks"):
        check_plan(plan)
    with pytest.raises(PlanError, match="deadlocks"):
        simulate(plan, random_costs(random.Random(0), 2, 1, [0]), ideal_rates())


def test_wrong_rank_count_is_rejected():
    plan = Plan("hand", 2, 1, 1, [[Action(LLM_F, 0, 0)]], [[(), ()]])
    with pytest.raises(PlanError, match="1 rank lists for pp=2"):
        check_plan(plan)


@pytest.mark.parametrize("group", [1, 2])
def test_group_smaller_than_pp_never_runs(group):
    """Megatron-core rejects micro-batch groups smaller than pp; with them its interleaved order
    deadlocks (rank 0 waits for the last stage's output of a micro-batch rank 3 has not reached).
    llm_order does not validate the group itself, so check_plan must catch it."""
    with pytest.raises((PlanError, ValueError), match="deadlocks|group|range"):
        check_plan(megatron_plan(4, 2, [0] * 8, group))
