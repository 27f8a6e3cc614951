"""The split of a step's packed micro-batches over the data-parallel ranks that equalises their
cost: each sample's training FLOPs from the one FLOP model (megaomni.flops). Every rank computes
the same assignment from the same step plan, so no rank coordinates the others.
"""

from __future__ import annotations

from megaomni.data.packing import balanced_assign


def imbalance(rank_costs: list[float]) -> float:
    """max / mean of the ranks' costs: 1.0 is perfect balance."""
    mean = sum(rank_costs) / len(rank_costs)
    return max(rank_costs) / mean if mean > 0 else 1.0


def assign_to_ranks(costs: list[float], ranks: int, minimum: int, equal: bool = False) -> list[list[int]]:
    """Indices of the micro-batches each rank runs (in step order), balancing summed cost, every
    rank getting at least ``minimum`` (``equal``: exactly as many as the others). Falls back to
    dealing cost-sorted micro-batches in turn when the balanced split would leave a rank short."""
    if len(costs) < ranks * minimum:
        raise ValueError(f"{len(costs)} micro-batches cannot give {ranks} ranks {minimum} each")
    if equal:
        if len(costs) % ranks:
            raise ValueError(f"{len(costs)} micro-batches do not split equally over {ranks} ranks")
        owner = balanced_assign(costs, ranks, lengths=[1] * len(costs), capacity=len(costs) // ranks).tolist()
    else:
        owner = balanced_assign(costs, ranks).tolist()
    per_rank = [[i for i, r in enumerate(owner) if r == rank] for rank in range(ranks)]
    if min(len(p) for p in per_rank) < minimum:
        by_cost = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
        per_rank = [sorted(by_cost[rank::ranks]) for rank in range(ranks)]
    return per_rank


def contiguous_split(count: int, ranks: int) -> list[list[int]]:
    """The unbalanced baseline: micro-batches dealt out in contiguous runs, step order."""
    bounds = [count * r // ranks for r in range(ranks + 1)]
    return [list(range(bounds[r], bounds[r + 1])) for r in range(ranks)]
