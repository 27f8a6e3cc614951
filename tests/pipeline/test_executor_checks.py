"""The executor refuses a plan that cannot run before it sends or computes anything."""

from __future__ import annotations

import pytest

from megaomni.pipeline.executor import PlanExecutor
from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.plan import RECV, PlanError


def _executor(pp: int, rank: int) -> PlanExecutor:
    # Only what run() reads before its first action; building one for real needs process groups.
    executor = object.__new__(PlanExecutor)
    executor.pp, executor.rank = pp, rank
    return executor


def test_executor_refuses_a_plan_with_a_missing_dependency():
    plan = megatron_plan(2, 1, [1, 0, 2])
    # Rank 1 forgets to receive micro-batch 0's activations: its first forward has no input.
    first = next(i for i, a in enumerate(plan.actions[1]) if a.kind == RECV)
    del plan.actions[1][first]
    with pytest.raises(PlanError, match=r"rank 1, action 0 \(llm_f\(mb 0, stage 1\)\): needs \('act', 0, 0\)"):
        _executor(2, 0).run(plan, [None] * 3, [[]] * 3, forward_step_func=None)


def test_executor_refuses_a_plan_for_another_layout():
    plan = megatron_plan(2, 1, [0, 0])
    with pytest.raises(PlanError, match="pp=2 and 2 micro-batches given to pp=4 with 2"):
        _executor(4, 0).run(plan, [None] * 2, [[]] * 2, forward_step_func=None)
