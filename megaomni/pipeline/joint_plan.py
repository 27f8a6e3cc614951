"""The joint policy: every pipeline rank encodes a share of every micro-batch's media, in the
gaps of megatron-core's LLM order, and sends its encoder outputs to the first stage's rank just
before that rank embeds the micro-batch; their gradients come back the same way.

The planner is a list scheduler run on estimated costs. Each rank keeps megatron-core's LLM order
(and so its activation memory) and, whenever it decides what to do next:

1. runs its next encoder call (its shares of one or more micro-batches, see
   :func:`encoder_calls`) if the first stage will need the call's first micro-batch within
   ``lookahead`` micro-batches (so the LLM never waits for it);
2. else runs its next LLM action if that action's inputs have arrived;
3. else fills the gap: the backward of an encoder call whose output gradients have all
   arrived, or the forward of a later call (at most ``window`` micro-batches ahead, bounding the
   encoder outputs held in memory);
4. else waits.

Warm-up gaps (later ranks waiting for the first activations) fill with encoder forwards and
cool-down gaps (earlier ranks finishing backwards) with encoder backwards. Several shares
(item by item, or whole micro-batches), call sizes, settings of ``lookahead`` and of whether a
gap-filler must fit before the LLM's next input are planned and the fastest by simulation is
kept, so the plan adapts to each step's micro-batches.
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
MAX_CALL = 3  # micro-batches an encoder call may cover, at most
VARIANTS = [(1, True), (2, True), (1, False), (2, False)]  # (lookahead, fit) of the scheduler


def encoder_calls(shares: list[list[tuple[int, ...]]], pp: int, size: int) -> list[list[tuple[int, ...]]]:
    """Each rank's encoder calls, in order: the micro-batches it has a share of, ``size`` to a
    call."""
    calls = []
    for rank in range(pp):
        owned = [m for m, share in enumerate(shares) if share[rank]]
        calls.append([tuple(owned[i:i + size]) for i in range(0, len(owned), size)])
    return calls


class _Scheduler:
    def __init__(self, plan: Plan, costs: StepCosts, rates: Rates, chunk_run: int, lookahead: int, fit: bool,
                 calls: list[list[tuple[int, ...]]]):
        self.plan, self.costs, self.rates = plan, costs, rates
        self.lookahead, self.window, self.fit = lookahead, lookahead + plan.pp, fit
        pp, m = plan.pp, plan.num_micro
        self.llm = [llm_order(pp, plan.vpp, r, m, chunk_run) for r in range(pp)]
        self.next_llm = [0] * pp
        self.calls = calls
        self.next_call = [0] * pp
        self.backward_done = [set() for _ in range(pp)]  # indices into calls[rank]
        self.clock = [0.0] * pp
        self.arrivals: dict[tuple, float] = {}  # (key, receiving rank) -> arrival time
        self.inbox: list[list[float]] = [[] for _ in range(pp)]  # each rank's arrival times, sorted
        self.channel_free: dict[tuple, float] = {}
        self.backward_left = [len(c) for c in calls]

    def next_encoded(self, rank: int) -> int:
        """The first micro-batch of the rank's next encoder call (num_micro: none left)."""
        calls = self.calls[rank]
        return calls[self.next_call[rank]][0] if self.next_call[rank] < len(calls) else self.plan.num_micro

    def call_action(self, kind: str, call: tuple[int, ...]) -> Action:
        return Action(kind, call[0], call=call if len(call) > 1 else ())

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
                    self.local[rank].update(("feat", m, rank) for m in action.micros)
                elif action.kind == ENC_B:
                    self.backward_left[rank] -= 1
                elif action.kind == LLM_B and action.stage == 0:
                    self.local[rank].add(("feat_grad", action.micro, rank))

    def encode(self, rank: int) -> list[Action]:
        call = self.calls[rank][self.next_call[rank]]
        self.next_call[rank] += 1
        sends = [Action(SEND, m, key=("feat", m, rank), peer=0) for m in call] if rank != 0 else []
        return [self.call_action(ENC_F, call)] + sends

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
        """The first encoded call of the rank whose output gradients have all arrived by ``by``."""
        for index in range(self.next_call[rank]):
            if index not in self.backward_done[rank] and all(
                    self._arrival(("feat_grad", m, rank), rank, 0) <= by for m in self.calls[rank][index]):
                return index
        return None

    def decide(self, rank: int) -> list[Action] | None:
        now, need, upcoming = self.clock[rank], self.first_stage_next(), self.next_encoded(rank)
        llm_left = self.next_llm[rank] < len(self.llm[rank])
        encode_left = upcoming < self.plan.num_micro
        if encode_left and upcoming <= need + self.lookahead:
            return self.encode(rank)
        ready_at = self.inputs_at(rank) if llm_left else INF
        if ready_at <= now:
            return self.llm_step(rank)
        index = self.ready_backward(rank, now)
        filler = None
        if index is not None:
            call = self.calls[rank][index]
            receive = [Action(RECV, m, key=("feat_grad", m, rank), peer=0) for m in call] if rank != 0 else []
            filler = receive + [self.call_action(ENC_B, call)]
        elif encode_left and upcoming <= need + self.window:
            filler = [self.call_action(ENC_F, self.calls[rank][self.next_call[rank]])]
        if filler is None:
            return None
        if self.fit and llm_left and now + self.seconds(rank, filler[-1]) > ready_at:
            return None
        if index is None:
            return self.encode(rank)
        self.backward_done[rank].add(index)
        return filler

    def wake_time(self, rank: int) -> float:
        """The next time something may change for a rank with nothing to do now."""
        inbox = self.inbox[rank]
        i = bisect.bisect_right(inbox, self.clock[rank])
        return inbox[i] if i < len(inbox) else INF

    def finished(self, rank: int) -> bool:
        return (self.next_llm[rank] >= len(self.llm[rank]) and self.next_call[rank] >= len(self.calls[rank])
                and self.backward_left[rank] == 0)

    def run(self) -> Plan:
        """Always advance the rank with the earliest clock (ties: the lowest rank): it acts if it
        can, else waits until its next arrival or the next other rank's clock, whichever is first
        (that rank may send it something); a rank with neither is stalled until some rank acts."""
        clock = self.clock
        self.local = [set() for _ in range(self.plan.pp)]
        live = [r for r in range(self.plan.pp) if not self.finished(r)]
        stalled: set[int] = set()
        while live:
            candidates = [r for r in live if r not in stalled] if stalled else live
            if not candidates:
                raise PlanError("the joint planner found no rank able to proceed")
            rank = min(candidates, key=clock.__getitem__)  # candidates ascend: ties go to the lowest rank
            actions = self.decide(rank)
            if actions:
                self.emit(rank, actions)
                stalled.clear()
                if self.finished(rank):
                    live.remove(rank)
                continue
            now = clock[rank]
            wake = min([t for t in map(clock.__getitem__, candidates) if t > now] + [self.wake_time(rank)])
            if wake == INF:
                stalled.add(rank)
            else:
                clock[rank] = wake
        return self.plan


def joint_plan(pp: int, vpp: int, costs: StepCosts, rates: Rates, chunk_run: int = 0,
               fallback: bool = True, call_size: int = 0) -> Plan:
    """The fastest (by simulation on ``costs``) of the joint plans tried for this step, and of
    the baseline's (with ``fallback``). Shares are tried item by item (finest balance) and whole
    micro-batches; encoder calls of 1 to ``MAX_CALL`` micro-batches (``call_size``: only
    that many). Each encoder call has a floor, the host's time to launch it, which ``rates``
    carry: fewer, larger calls pay it less often but hold more activations and start later.
    ``chunk_run``: micro-batches a virtual stage runs in a row (interleaved only; 0: ``pp``)."""
    num_micro = len(costs.llm)
    # The baseline's placement is a candidate too: a step whose media cannot spread (one huge
    # image) then costs no more than under megatron.
    best, best_time = None, INF
    if fallback:
        best = megatron_plan(pp, vpp, [len(items) for items in costs.items], chunk_run)
        best_time = simulate(best, costs, rates).step_time
    layouts = []  # (shares, calls): who encodes what, and in which calls
    for split in (split_shares, whole_shares):
        loads = [0.0] * pp
        shares = [split(items, [1.0] * pp, loads) for items in costs.items]
        for size in ((call_size,) if call_size else range(1, MAX_CALL + 1)):
            layout = (shares, encoder_calls(shares, pp, size))
            if layout not in layouts:
                layouts.append(layout)

    def planned(layout, lookahead: int, fit: bool):
        plan = Plan("joint", pp, vpp, num_micro, [[] for _ in range(pp)], layout[0])
        _Scheduler(plan, costs, rates, chunk_run, lookahead, fit, layout[1]).run()
        return simulate(plan, costs, rates).step_time, plan

    # Every layout with the first scheduler setting, the other settings only for the three best
    # layouts (settings move a step by a few percent, layouts by tens: 15 scheduler runs, not 24).
    first = sorted(((*planned(layout, *VARIANTS[0]), i) for i, layout in enumerate(layouts)), key=lambda t: t[0])
    candidates = [(t, plan) for t, plan, _ in first]
    for _, _, i in first[:3]:
        candidates += [planned(layouts[i], *variant) for variant in VARIANTS[1:]]
    for step, plan in candidates:
        if step < best_time:
            best, best_time = plan, step
    return best
