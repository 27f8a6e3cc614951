"""Run a plan on costs instead of kernels: each rank does its actions in order, a compute action
takes its FLOPs at the fitted rate, a send costs its rank nothing and arrives after the link's
latency and transfer time (one transfer at a time per channel), a receive waits for its data.

The result is a :class:`Timeline`, the same record the executor makes of a real step, so both
report step time, busy time and bubble the same way and draw the same picture.
"""

from __future__ import annotations

from collections import defaultdict, deque

from megaomni.pipeline.costs import Rates, StepCosts
from megaomni.pipeline.plan import COMPUTE, ENC_B, ENC_F, RECV, SEND, Action, Plan, PlanError
from megaomni.pipeline.timeline import Event, Timeline


def action_seconds(plan: Plan, rank: int, action: Action, costs: StepCosts, rates: Rates) -> float:
    share = plan.shares[action.micro][rank] if action.kind in (ENC_F, ENC_B) else ()
    if action.kind in (ENC_F, ENC_B) and not share:
        return 0.0
    flops = costs.flops(action.kind, action.micro, action.stage, share)
    return rates.per_flop[action.kind] * flops + rates.fixed[action.kind]


def key_bytes(plan: Plan, key: tuple, costs: StepCosts) -> float:
    name, micro, which = key
    if name in ("act", "grad"):
        return costs.act_bytes[micro]
    return sum(costs.item_bytes[micro][i] for i in plan.shares[micro][which])


def simulate(plan: Plan, costs: StepCosts, rates: Rates) -> Timeline:
    clock = [0.0] * plan.pp
    position = [0] * plan.pp
    messages: dict[tuple, deque] = defaultdict(deque)  # (src, dst, name) -> arrival times
    channel_free: dict[tuple, float] = defaultdict(float)
    events: list[Event] = []
    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(plan.actions):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                if action.kind == SEND:
                    channel = (rank, action.peer, action.key[0])
                    start = max(clock[rank], channel_free[channel])
                    arrival = start + rates.latency + key_bytes(plan, action.key, costs) / rates.bytes_per_s
                    channel_free[channel] = arrival
                    messages[channel].append(arrival)
                elif action.kind == RECV:
                    queue = messages[(action.peer, rank, action.key[0])]
                    if not queue:
                        break  # its sender has not got there yet
                    clock[rank] = max(clock[rank], queue.popleft())
                elif action.kind in COMPUTE:
                    seconds = action_seconds(plan, rank, action, costs, rates)
                    if seconds > 0:
                        events.append(Event(rank, action.kind, action.micro, action.stage,
                                            clock[rank], clock[rank] + seconds))
                    clock[rank] += seconds
                position[rank] += 1
                progress = True
    for rank, actions in enumerate(plan.actions):
        if position[rank] < len(actions):
            raise PlanError(f"rank {rank}, action {position[rank]} ({actions[position[rank]]}) "
                            "waits forever: the plan deadlocks")
    return Timeline(plan.pp, events, step_time=max(clock) if clock else 0.0)
