"""The joint policy: every pipeline rank encodes a share of every micro-batch's media, in the
gaps of megatron-core's LLM order, and sends its encoder outputs to the first stage's rank just
before that rank embeds the micro-batch; their gradients come back the same way.

The planner is a list scheduler run on estimated costs. Each rank keeps megatron-core's LLM order
(and so its activation memory) and, whenever it decides what to do next:

1. encodes its share of micro-batch ``m`` if the first stage will need ``m`` within ``lookahead``
   micro-batches (so the LLM never waits for it);
2. else runs its next LLM action if that action's inputs have arrived;
3. else fills the gap: the backward of its share of an encoded micro-batch whose output
   gradients have arrived, or the forward of a later one (at most ``window`` ahead, bounding the
   encoder outputs held in memory);
4. else waits.

Warm-up gaps (later ranks waiting for the first activations) fill with encoder forwards and
cool-down gaps (earlier ranks finishing backwards) with encoder backwards. Several settings of
``lookahead`` and of whether a gap-filler must fit before the LLM's next input are planned and
the fastest by simulation is kept, so the plan adapts to each step's micro-batches.
"""

from __future__ import annotations

import bisect

from megaomni.pipeline.costs import Rates, StepCosts
from megaomni.pipeline.llm_order import FORWARD, llm_order
from megaomni.pipeline.megatron_plan import llm_backward, llm_forward, megatron_plan
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, RECV, SEND, Action, Plan, PlanError
from megaomni.pipeline.shares import split_shares, whole_shares
from megaomni.pipeline.simulate import action_seconds, simulate, transfer_arrival

INF = float("inf")


class _Scheduler:
    def __init__(self, plan: Plan, costs: StepCosts, rates: Rates, group: int, lookahead: int, fit: bool):
        self.plan, self.costs, self.rates = plan, costs, rates
        self.lookahead, self.window, self.fit = lookahead, lookahead + plan.pp, fit
        pp, m = plan.pp, plan.num_micro
        self.llm = [llm_order(pp, plan.vpp, r, m, group) for r in range(pp)]
        self.next_llm = [0] * pp
        self.next_enc = [self._skip(r, 0) for r in range(pp)]
        self.backward_done = [set() for _ in range(pp)]
        self.clock = [0.0] * pp
        self.arrivals: dict[tuple, float] = {}  # (key, receiving rank) -> arrival time
        self.inbox: list[list[float]] = [[] for _ in range(pp)]  # each rank's arrival times, sorted
        self.channel_free: dict[tuple, float] = {}
        self.backward_left = [sum(1 for m in range(plan.num_micro) if plan.shares[m][r]) for r in range(pp)]

    def _skip(self, rank: int, micro: int) -> int:
        while micro < self.plan.num_micro and not self.plan.shares[micro][rank]:
            micro += 1
        return micro

    def first_stage_next(self) -> int:
        """The micro-batch whose stage-0 forward rank 0 has not run yet."""
        for kind, micro, stage in self.llm[0][self.next_llm[0]:]:
            if kind == FORWARD and stage == 0:
                return micro
        return self.plan.num_micro

    def seconds(self, rank: int, action: Action) -> float:
        return action_seconds(self.plan, rank, action, self.costs, self.rates)

    def _arrival(self, key: tuple, rank: int, source: int) -> float:
        if source == rank:
            return 0.0 if key in self.local[rank] else INF
        return self.arrivals.get((key, rank), INF)

    def inputs_at(self, rank: int) -> float:
        """When the inputs of the rank's next LLM action are all there (INF: not yet sent)."""
        kind, micro, stage = self.llm[rank][self.next_llm[rank]]
        plan = self.plan
        if kind == FORWARD:
            if stage > 0:
                return self._arrival(("act", micro, stage - 1), rank, plan.rank_of(stage - 1))
            return max([self._arrival(("feat", micro, r), rank, r) for r in plan.encoding_ranks(micro)],
                       default=0.0)
        if stage == plan.stages - 1:
            return 0.0
        return self._arrival(("grad", micro, stage + 1), rank, plan.rank_of(stage + 1))

    def emit(self, rank: int, actions: list[Action]) -> None:
        for action in actions:
            self.plan.actions[rank].append(action)
            if action.kind == RECV:
                self.clock[rank] = max(self.clock[rank], self.arrivals[(action.key, rank)])
            elif action.kind == SEND:
                arrival = transfer_arrival(self.plan, rank, action, self.clock[rank], self.channel_free,
                                           self.costs, self.rates)
                self.arrivals[(action.key, action.peer)] = arrival
                bisect.insort(self.inbox[action.peer], arrival)
            else:
                self.clock[rank] += self.seconds(rank, action)
                if action.kind == ENC_F:
                    self.local[rank].add(("feat", action.micro, rank))
                elif action.kind == ENC_B:
                    self.backward_left[rank] -= 1
                elif action.kind == LLM_B and action.stage == 0:
                    self.local[rank].add(("feat_grad", action.micro, rank))

    def encode(self, rank: int) -> list[Action]:
        micro = self.next_enc[rank]
        self.next_enc[rank] = self._skip(rank, micro + 1)
        actions = [Action(ENC_F, micro)]
        if rank != 0:
            actions.append(Action(SEND, micro, key=("feat", micro, rank), peer=0))
        return actions

    def llm_step(self, rank: int) -> list[Action]:
        kind, micro, stage = self.llm[rank][self.next_llm[rank]]
        self.next_llm[rank] += 1
        if kind != FORWARD:
            grads = [Action(SEND, micro, key=("feat_grad", micro, r), peer=r)
                     for r in self.plan.encoding_ranks(micro) if stage == 0 and r != rank]
            return llm_backward(self.plan, rank, micro, stage) + grads
        receive = [Action(RECV, micro, key=("feat", micro, r), peer=r)
                   for r in self.plan.encoding_ranks(micro) if stage == 0 and r != rank]
        return receive + llm_forward(self.plan, rank, micro, stage)

    def ready_backward(self, rank: int, by: float):
        for micro in range(self.plan.num_micro):
            key = ("feat_grad", micro, rank)
            if micro in self.backward_done[rank] or not self.plan.shares[micro][rank]:
                continue
            if self._arrival(key, rank, 0) <= by:
                return micro
        return None

    def decide(self, rank: int) -> list[Action] | None:
        now, need = self.clock[rank], self.first_stage_next()
        llm_left = self.next_llm[rank] < len(self.llm[rank])
        encode_left = self.next_enc[rank] < self.plan.num_micro
        if encode_left and self.next_enc[rank] <= need + self.lookahead:
            return self.encode(rank)
        ready_at = self.inputs_at(rank) if llm_left else INF
        if ready_at <= now:
            return self.llm_step(rank)
        micro = self.ready_backward(rank, now)
        filler = None
        if micro is not None:
            self.backward_done[rank].add(micro)
            filler = ([Action(RECV, micro, key=("feat_grad", micro, rank), peer=0)] if rank != 0 else []) + [Action(ENC_B, micro)]
        elif encode_left and self.next_enc[rank] <= need + self.window:
            filler = [Action(ENC_F, self.next_enc[rank])]
        if filler is None:
            return None
        if self.fit and llm_left and now + self.seconds(rank, filler[-1]) > ready_at:
            if micro is not None:
                self.backward_done[rank].discard(micro)
            return None
        return filler if filler[-1].kind == ENC_B else self.encode(rank)

    def wake_time(self, rank: int) -> float:
        """The next time something may change for a rank with nothing to do now."""
        inbox = self.inbox[rank]
        i = bisect.bisect_right(inbox, self.clock[rank])
        return inbox[i] if i < len(inbox) else INF

    def run(self) -> Plan:
        pp = self.plan.pp
        self.local = [set() for _ in range(pp)]
        stalled = [False] * pp

        def finished(r):
            return (self.next_llm[r] >= len(self.llm[r]) and self.next_enc[r] >= self.plan.num_micro
                    and self.backward_left[r] == 0)

        while True:
            live = [r for r in range(pp) if not finished(r)]
            if not live:
                return self.plan
            candidates = [r for r in live if not stalled[r]]
            if not candidates:
                raise PlanError("the joint planner found no rank able to proceed")
            rank = min(candidates, key=lambda r: (self.clock[r], r))
            actions = self.decide(rank)
            if actions:
                self.emit(rank, actions)
                stalled = [False] * pp
                continue
            wake = min([self.wake_time(rank)] + [self.clock[r] for r in candidates if self.clock[r] > self.clock[rank]])
            if wake == INF:
                stalled[rank] = True
            else:
                self.clock[rank] = wake


def joint_plan(pp: int, vpp: int, costs: StepCosts, rates: Rates, group: int = 0,
               fallback: bool = True) -> Plan:
    """The fastest (by simulation on ``costs``) of the joint plans tried for this step, and of
    the baseline's (with ``fallback``). Shares are tried item by item (finest balance) and whole
    micro-batches (fewest encoder calls: each call has a floor, the host's time to launch it, which ``rates`` carry)."""
    num_micro = len(costs.llm)
    # The baseline's placement is a candidate too: a step whose media cannot spread (one huge
    # image) then costs no more than under megatron.
    best, best_time = None, INF
    if fallback:
        best = megatron_plan(pp, vpp, [len(items) for items in costs.items], group)
        best_time = simulate(best, costs, rates).step_time
    tried = []
    for split in (split_shares, whole_shares):
        loads = [0.0] * pp
        shares = [split(items, [1.0] * pp, loads) for items in costs.items]
        if shares in tried:
            continue
        tried.append(shares)
        for lookahead in (1, 2):
            for fit in (True, False):
                plan = Plan("joint", pp, vpp, num_micro, [[] for _ in range(pp)], shares)
                _Scheduler(plan, costs, rates, group, lookahead, fit).run()
                step = simulate(plan, costs, rates).step_time
                if step < best_time:
                    best, best_time = plan, step
    return best
