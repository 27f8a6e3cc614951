"""The point-to-point channels of a pipeline group: one two-rank process group per direction
and per kind of value (activations, their gradients, encoder outputs, their gradients).

With NCCL, sends and receives between two ranks on one communicator are matched in issue order
whatever they carry; a channel per kind means a plan only has to keep each kind in order
(which :func:`megaomni.pipeline.plan.check_plan` checks), not every message between two ranks.

Every channel carries one message when it is made. NCCL creates a communicator at its first
use, and creating one blocks both ranks until the other arrives: left to the step, a rank
sending its first encoder-output gradient would wait for the peer to reach its matching
receive, which the plan may have placed after a receive from this very rank, a deadlock that
the plan's semantics (sends never block) cannot see.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps


def channel_list(pp: int, vpp: int) -> list[tuple[int, int, str]]:
    """(source, destination, kind) of every channel a plan for ``pp`` x ``vpp`` stages uses."""
    forward = [(r, r + 1) for r in range(pp - 1)] + ([(pp - 1, 0)] if vpp > 1 and pp > 1 else [])
    channels = [(a, b, "act") for a, b in forward] + [(b, a, "grad") for a, b in forward]
    channels += [(r, 0, "feat") for r in range(1, pp)] + [(0, r, "feat_grad") for r in range(1, pp)]
    return channels


class Channels:
    """Creates every pipeline group's channels (collective: every rank calls it, in step)."""

    def __init__(self, pp: int, vpp: int, device: torch.device):
        mine = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        self.ranks = mine  # pipeline rank -> global rank
        self.me = mine.index(dist.get_rank())
        self.groups: dict = {}
        for ranks in sorted({tuple(r) for r in everyone}):
            for src, dst, kind in channel_list(pp, vpp):
                group = dist.new_group([ranks[src], ranks[dst]])
                if list(ranks) == mine:
                    self.groups[(src, dst, kind)] = group
        # One message per channel, in one order on every rank: pairwise meetings in a fixed
        # order cannot deadlock, and every communicator exists before the first step.
        token = torch.zeros(1, device=device)
        for src, dst, kind in channel_list(pp, vpp):
            if self.me == src:
                dist.send(token, dst=mine[dst], group=self.groups[(src, dst, kind)])
            elif self.me == dst:
                dist.recv(token, src=mine[src], group=self.groups[(src, dst, kind)])
        if device.type == "cuda":
            torch.cuda.synchronize()

    def channel(self, src: int, dst: int, kind: str):
        """The channel's process group and the global rank of the other end (from this rank)."""
        return self.groups[(src, dst, kind)], self.ranks[dst if self.me == src else src]
