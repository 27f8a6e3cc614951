"""A pipeline step as data: every pipeline rank's ordered list of actions.

One planner per policy writes a :class:`Plan`; the executor runs it on the ranks and the
simulator runs it on costs, so what is timed and what is run are the same schedule.

Actions exchange named values (:data:`Key`):

- ``("act", m, s)``: the output of LLM stage ``s`` for micro-batch ``m``;
- ``("grad", m, s)``: the gradient of the loss with respect to stage ``s``'s input;
- ``("feat", m, r)``: rank ``r``'s share of micro-batch ``m``'s encoder outputs;
- ``("feat_grad", m, r)``: its gradient, from the first stage's rank.

An encoder action may cover several micro-batches (``Action.call``): one encoder call on their
shares together, so the host launches the encoder's kernels once for all of them.

Stage ``s`` (of ``pp * vpp``) lives on rank ``s % pp`` as its model chunk ``s // pp``
(megatron-core's interleaved order).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable

ENC_F, ENC_B, LLM_F, LLM_B, SEND, RECV = "enc_f", "enc_b", "llm_f", "llm_b", "send", "recv"
COMPUTE = (ENC_F, ENC_B, LLM_F, LLM_B)

Key = tuple  # (name, micro-batch, stage or owner rank)


class PlanError(RuntimeError):
    """A plan that cannot run: names the rank, the action's position and what is wrong."""


@dataclass(frozen=True)
class Action:
    kind: str
    micro: int
    stage: int = -1  # LLM actions
    key: Key = ()  # send / recv: the value moved
    peer: int = -1  # send / recv: the other pipeline rank
    call: tuple[int, ...] = ()  # encoder actions: the micro-batches of the call (empty: just ``micro``)

    @property
    def micros(self) -> tuple[int, ...]:
        return self.call or (self.micro,)

    def __str__(self) -> str:
        if self.kind in (SEND, RECV):
            arrow = "->" if self.kind == SEND else "<-"
            return f"{self.kind} {self.key[0]}(mb {self.key[1]}, {self.key[2]}) {arrow} rank {self.peer}"
        where = f", stage {self.stage}" if self.stage >= 0 else ""
        micros = "+".join(map(str, self.micros))
        return f"{self.kind}(mb {micros}{where})"


@dataclass
class Plan:
    """``actions[r]``: rank ``r``'s actions in order. ``shares[m][r]``: indices (into
    micro-batch ``m``'s media items, see :mod:`megaomni.pipeline.shares`) that rank ``r``
    encodes."""

    policy: str
    pp: int
    vpp: int
    num_micro: int
    actions: list[list[Action]]
    shares: list[list[tuple[int, ...]]] = field(default_factory=list)

    @property
    def stages(self) -> int:
        return self.pp * self.vpp

    def rank_of(self, stage: int) -> int:
        return stage % self.pp

    def encoding_ranks(self, micro: int) -> list[int]:
        return [r for r in range(self.pp) if self.shares[micro][r]]

    def to_dict(self) -> dict:
        return {"policy": self.policy, "pp": self.pp, "vpp": self.vpp, "num_micro": self.num_micro,
                "shares": [[list(s) for s in m] for m in self.shares],
                "actions": [[[a.kind, a.micro, a.stage, list(a.key), a.peer, list(a.call)] for a in rank]
                            for rank in self.actions]}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        actions = [[Action(k, m, s, tuple(key), peer, tuple(call[0]) if call else ())
                    for k, m, s, key, peer, *call in rank] for rank in data["actions"]]
        shares = [[tuple(s) for s in m] for m in data["shares"]]
        return cls(data["policy"], data["pp"], data["vpp"], data["num_micro"], actions, shares)


def without_backward(plan: Plan) -> Plan:
    """``plan`` without its backward (evaluation): the backward actions and the gradients they
    exchange dropped, the forward ones left in their order. Removing actions no forward one waits
    for adds no wait, so the plan still runs."""
    def forward(action: Action) -> bool:
        return action.kind in (ENC_F, LLM_F) or action.kind in (SEND, RECV) and action.key[0] in ("act", "feat")

    return Plan(plan.policy, plan.pp, plan.vpp, plan.num_micro,
                [[a for a in rank if forward(a)] for rank in plan.actions], plan.shares)


def needs(plan: Plan, rank: int, action: Action) -> list[Key]:
    """The values ``action`` reads, all of which must exist on ``rank`` before it runs."""
    m, s = action.micro, action.stage
    if action.kind == LLM_F:
        if s > 0:
            return [("act", m, s - 1)]
        return [("feat", m, r) for r in plan.encoding_ranks(m)]
    if action.kind == LLM_B:
        inputs = [("ran", m, s)]  # its own forward
        return inputs + ([("grad", m, s + 1)] if s < plan.stages - 1 else [])
    if action.kind == ENC_B:
        return [("feat_grad", g, rank) for g in action.micros]
    if action.kind == SEND:
        return [action.key]
    return []


def makes(plan: Plan, rank: int, action: Action) -> list[Key]:
    """The values ``action`` creates on ``rank``."""
    m, s = action.micro, action.stage
    if action.kind == LLM_F:
        return [("ran", m, s)] + ([("act", m, s)] if s < plan.stages - 1 else [])
    if action.kind == LLM_B:
        if s > 0:
            return [("grad", m, s)]
        return [("feat_grad", m, r) for r in plan.encoding_ranks(m)]
    if action.kind == ENC_F:
        return [("feat", g, rank) for g in action.micros]
    if action.kind == RECV:
        return [action.key]
    return []


def check_plan(plan: Plan) -> None:
    """Raise :class:`PlanError` unless the plan can run: every action's inputs made earlier on its
    rank (or received), every send received by its peer in the same order, and no rank waiting
    forever (checked by running the plan with unit costs)."""
    if len(plan.actions) != plan.pp:
        raise PlanError(f"plan has {len(plan.actions)} rank lists for pp={plan.pp}")
    channels: dict[tuple[int, int], list] = defaultdict(list)
    for rank, actions in enumerate(plan.actions):
        have: set = set()
        for i, action in enumerate(actions):
            for key in needs(plan, rank, action):
                if key not in have:
                    raise PlanError(f"rank {rank}, action {i} ({action}): needs {key}, "
                                    "which no earlier action on this rank makes or receives")
            have.update(makes(plan, rank, action))
            if action.kind in (SEND, RECV):
                if not 0 <= action.peer < plan.pp or action.peer == rank:
                    raise PlanError(f"rank {rank}, action {i} ({action}): bad peer")
                channels[channel_of(rank, action) + (action.kind,)].append(action.key)
    for (src, dst, name, kind), keys in channels.items():
        other = channels.get((src, dst, name, RECV if kind == SEND else SEND), [])
        if kind == SEND and keys != other:
            raise PlanError(f"rank {src} sends {keys} to rank {dst}, which receives {other} "
                            f"(each kind of value between two ranks must be received in the order sent)")
        if kind == RECV and not other:
            raise PlanError(f"rank {dst} receives {keys} from rank {src}, which sends nothing")
    refuse_deadlock(plan, first_blocked(plan))


def channel_of(rank: int, action: Action) -> tuple[int, int, str]:
    """(source, destination, kind of value) of a send or receive on ``rank``: each is its own
    first-in first-out channel."""
    if action.kind == SEND:
        return rank, action.peer, action.key[0]
    return action.peer, rank, action.key[0]


def walk(plan: Plan, step: Callable[[int, Action], bool]):
    """Run every rank's actions in order, calling ``step(rank, action)`` on each; ``step`` returns
    False for a receive whose data is not sent yet, and that rank waits while the others go on.
    Returns (rank, action index) of the first action left waiting forever, or None."""
    position = [0] * plan.pp
    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(plan.actions):
            while position[rank] < len(actions) and step(rank, actions[position[rank]]):
                position[rank] += 1
                progress = True
    for rank, actions in enumerate(plan.actions):
        if position[rank] < len(actions):
            return rank, position[rank]
    return None


def refuse_deadlock(plan: Plan, stuck) -> None:
    if stuck is not None:
        rank, i = stuck
        raise PlanError(f"rank {rank}, action {i} ({plan.actions[rank][i]}) waits forever: "
                        "the plan deadlocks")


def first_blocked(plan: Plan):
    """(rank, action index) of a receive that can never complete, or None. Sends never block;
    a receive completes once its peer has sent."""
    sent: dict[tuple, deque] = defaultdict(deque)

    def step(rank: int, action: Action) -> bool:
        if action.kind == SEND:
            sent[channel_of(rank, action)].append(action.key)
        elif action.kind == RECV:
            queue = sent[channel_of(rank, action)]
            if not queue:
                return False
            queue.popleft()
        return True

    return walk(plan, step)
