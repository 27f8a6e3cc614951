"""The baseline policy as a plan: encoders on the first stage's rank, megatron-core's LLM order.

This is what ``pipeline.schedule=megatron`` runs through megatron-core's own schedules; as a plan
it lets the simulator price the baseline on the same costs as every other policy."""

from __future__ import annotations

from megaomni.pipeline.llm_order import FORWARD, llm_order
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F, RECV, SEND, Action, Plan


def llm_forward(plan: Plan, rank: int, micro: int, stage: int) -> list[Action]:
    """Receive the stage's input, run it, send its output on (feature receives are the
    policy's: they depend on who encodes)."""
    actions = []
    if stage > 0 and plan.rank_of(stage - 1) != rank:
        actions.append(Action(RECV, micro, key=("act", micro, stage - 1), peer=plan.rank_of(stage - 1)))
    actions.append(Action(LLM_F, micro, stage))
    if stage < plan.stages - 1 and plan.rank_of(stage + 1) != rank:
        actions.append(Action(SEND, micro, key=("act", micro, stage), peer=plan.rank_of(stage + 1)))
    return actions


def llm_backward(plan: Plan, rank: int, micro: int, stage: int) -> list[Action]:
    actions = []
    if stage < plan.stages - 1 and plan.rank_of(stage + 1) != rank:
        actions.append(Action(RECV, micro, key=("grad", micro, stage + 1), peer=plan.rank_of(stage + 1)))
    actions.append(Action(LLM_B, micro, stage))
    if stage > 0 and plan.rank_of(stage - 1) != rank:
        actions.append(Action(SEND, micro, key=("grad", micro, stage), peer=plan.rank_of(stage - 1)))
    return actions


def megatron_plan(pp: int, vpp: int, items_per_micro: list[int], chunk_run: int = 0) -> Plan:
    """``items_per_micro[m]``: media items of micro-batch ``m``, all encoded on rank 0 right
    before the first stage's forward, their backward right after the first stage's backward.
    ``chunk_run``: micro-batches a virtual stage runs in a row (interleaved only; 0: ``pp``)."""
    num_micro = len(items_per_micro)
    shares = [[tuple(range(n))] + [()] * (pp - 1) for n in items_per_micro]
    plan = Plan("megatron", pp, vpp, num_micro, [[] for _ in range(pp)], shares)
    for rank in range(pp):
        actions = plan.actions[rank]
        for kind, micro, stage in llm_order(pp, vpp, rank, num_micro, chunk_run):
            media = stage == 0 and items_per_micro[micro] > 0
            if kind == FORWARD:
                actions += ([Action(ENC_F, micro)] if media else []) + llm_forward(plan, rank, micro, stage)
            else:
                actions += llm_backward(plan, rank, micro, stage) + ([Action(ENC_B, micro)] if media else [])
    return plan
