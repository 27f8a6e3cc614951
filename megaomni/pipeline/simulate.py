"""Run a plan on costs instead of kernels: each rank does its actions in order, a compute action
takes its FLOPs at the fitted rate, a send costs its rank nothing and arrives after the link's
latency and transfer time (one transfer at a time per channel), a receive waits for its data.

The result is a :class:`Timeline`, the same record the executor makes of a real step, so both
report step time, busy time and bubble the same way and draw the same picture.
"""

from __future__ import annotations

from collections import defaultdict, deque

from megaomni.pipeline.costs import Rates, StepCosts
from megaomni.pipeline.plan import (COMPUTE, ENC_B, ENC_F, RECV, SEND, Action, Plan, channel_of,
                                    refuse_deadlock, walk)
from megaomni.pipeline.timeline import Event, Timeline


def action_work(plan: Plan, rank: int, action: Action, costs: StepCosts) -> tuple[float, int]:
    """FLOPs and model calls of a compute action on ``rank``."""
    if action.kind in (ENC_F, ENC_B):
        return costs.encoder_call(action.kind, [(m, plan.shares[m][rank]) for m in action.micros])
    return costs.flops(action.kind, action.micro, action.stage), 1


def action_seconds(plan: Plan, rank: int, action: Action, costs: StepCosts, rates: Rates) -> float:
    flops, calls = action_work(plan, rank, action, costs)
    return rates.seconds(action.kind, flops, calls) if calls else 0.0


def key_bytes(plan: Plan, key: tuple, costs: StepCosts) -> float:
    name, micro, which = key
    if name in ("act", "grad"):
        return costs.act_bytes[micro]
    return sum(costs.item_bytes[micro][i] for i in plan.shares[micro][which])


def transfer_arrival(plan: Plan, rank: int, send: Action, ready: float, channel_free: dict,
                     costs: StepCosts, rates: Rates) -> float:
    """When ``send`` from ``rank``, its data ready at ``ready``, arrives: after the transfers
    before it on its channel (``channel_free``: channel -> when it is free; updated)."""
    channel = channel_of(rank, send)
    start = max(ready, channel_free.get(channel, 0.0))
    channel_free[channel] = start + rates.latency + key_bytes(plan, send.key, costs) / rates.bytes_per_s
    return channel_free[channel]


def simulate(plan: Plan, costs: StepCosts, rates: Rates) -> Timeline:
    clock = [0.0] * plan.pp
    messages: dict[tuple, deque] = defaultdict(deque)  # channel -> arrival times
    channel_free: dict[tuple, float] = {}
    events: list[Event] = []

    def step(rank: int, action: Action) -> bool:
        if action.kind == SEND:
            messages[channel_of(rank, action)].append(
                transfer_arrival(plan, rank, action, clock[rank], channel_free, costs, rates))
        elif action.kind == RECV:
            queue = messages[channel_of(rank, action)]
            if not queue:
                return False  # its sender has not got there yet
            clock[rank] = max(clock[rank], queue.popleft())
        elif action.kind in COMPUTE:
            seconds = action_seconds(plan, rank, action, costs, rates)
            if seconds > 0:
                events.append(Event(rank, action.kind, action.micro, action.stage, clock[rank], clock[rank] + seconds,
                                    call=action.call))
            clock[rank] += seconds
        return True

    refuse_deadlock(plan, walk(plan, step))
    return Timeline(plan.pp, events, step_time=max(clock) if clock else 0.0)
