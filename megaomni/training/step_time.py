"""Where a step's time goes: data wait, forward and backward, optimizer (each rank's own clock,
the GPU synchronised at each mark), the encoders' and the LLM's actions when the plan executor
recorded them, and the slowest and mean rank (stragglers)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F

PARTS = {"encoders_s": (ENC_F, ENC_B), "llm_s": (LLM_F, LLM_B)}


class StepClock:
    """``mark(name)`` ends the part begun at the previous mark (or at construction)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts: dict[str, float] = {}
        self._last = self.started = time.perf_counter()

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the part's kernels count to it, not to the next
        now = time.perf_counter()
        self.parts[f"{name}_s"] = now - self._last
        self._last = now

    @property
    def total(self) -> float:
        return self._last - self.started


def action_time(timeline) -> dict:
    """Seconds of this rank's recorded encoder and LLM actions (forward and backward), if any."""
    if timeline is None:
        return {}
    rank = dist.get_rank()
    return {part: sum(e.end - e.start for e in timeline.events if e.rank == rank and e.kind in kinds)
            for part, kinds in PARTS.items()}


def over_ranks(values: dict[str, float], device: torch.device) -> dict:
    """Each value's largest and mean over all ranks (``<name>_max``, ``<name>_mean``)."""
    local = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    largest, total = local.clone(), local.clone()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    dist.all_reduce(total)
    world = dist.get_world_size()
    out = {}
    for name, most, summed in zip(values, largest.tolist(), total.tolist()):
        out[f"{name}_max"], out[f"{name}_mean"] = most, summed / world
    return out
