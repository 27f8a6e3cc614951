"""One training step's samples -> packed micro-batches -> data-parallel ranks.

The plan depends only on the step's samples and the budgets, never on the layout, so every
layout trains on the same micro-batches (an MoE router sees the same rows under any layout); the
layout decides only which rank runs which micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from megaomni.config import DataConfig
from megaomni.data.balance import assign_to_ranks, contiguous_split, imbalance
from megaomni.data.packing import ffd_pack
from megaomni.data.sizes import SampleSizes
from megaomni.flops import FlopModel
from megaomni.media import registry

_SCALE = 1 << 20  # fixed-point unit of a budget when several budgets bind at once


def budgeted():
    """The modalities whose encoder rows a micro-batch budget limits (``Modality.budget``)."""
    return [m for m in registry.modalities() if m.budget]


def sample_sizes(sizes: SampleSizes) -> tuple[int, ...]:
    """(LLM tokens, then each budgeted modality's rows: image patches, audio frames)."""
    return (sizes.tokens, *(sizes.rows(m.name) for m in budgeted()))


def budgets(data: DataConfig) -> tuple[int, ...]:
    """Per-micro-batch budgets in :func:`sample_sizes` order; 0: no limit."""
    return (data.max_tokens or data.seq_length, *(getattr(data, m.budget) for m in budgeted()))


def over_budget(sizes: SampleSizes, data: DataConfig) -> str | None:
    """Why a sample of ``sizes`` fits no micro-batch, or None."""
    names = ("tokens", *(m.rows_name for m in budgeted()))
    for name, size, budget in zip(names, sample_sizes(sizes), budgets(data)):
        if budget and size > budget:
            return f"{size} {name} > budget {budget}"
    return None


def pack(samples: list[SampleSizes], data: DataConfig) -> list[list[int]]:
    """First-fit-decreasing over the whole step: positions (into ``samples``) of each micro-batch.

    With one budget the lengths pack exactly; with encoder budgets too, each sample's fill is its
    largest share of any budget (rounded up), which keeps every budget (sum of shares <= 1)."""
    limits = budgets(data)
    sizes = [sample_sizes(s) for s in samples]
    if not any(limits[1:]):
        fill, capacity = [size[0] for size in sizes], limits[0]
    else:
        fill = [max(-(-v * _SCALE // b) for v, b in zip(size, limits) if b) for size in sizes]
        capacity = _SCALE
    owner = ffd_pack(fill, capacity, window=max(len(samples), 1)).tolist()
    if min(owner, default=0) < 0:
        raise ValueError("a sample exceeds the micro-batch budget (the loader skips those)")
    packs: list[list[int]] = [[] for _ in range(max(owner, default=-1) + 1)]
    for position, bin_id in enumerate(owner):
        packs[bin_id].append(position)
    return packs


def split_to(packs: list[list[int]], count: int) -> list[list[int]]:
    """Halve the fullest micro-batches until there are ``count`` (each rank needs its share)."""
    packs = [list(p) for p in packs]
    while len(packs) < count:
        fullest = max(range(len(packs)), key=lambda i: (len(packs[i]), -i))
        if len(packs[fullest]) < 2:
            raise ValueError(f"{sum(map(len, packs))} samples cannot make {count} micro-batches")
        half = len(packs[fullest]) // 2
        packs[fullest:fullest + 1] = [packs[fullest][:half], packs[fullest][half:]]
    return packs


@dataclass
class StepPlan:
    packs: list[list[int]]  # sample positions of each micro-batch, in step order
    length: int  # tokens of the longest packed row (that of every row: one shape for pipeline stages)
    ranks: list[list[int]]  # micro-batches (indices into packs) of each data-parallel rank
    padding: float  # padding tokens / all tokens of the step's rows
    imbalance_before: float  # max/mean estimated cost over ranks, contiguous split
    imbalance_after: float  # the same, after balancing
    row_lengths: list[int]  # tokens each packed row is padded to (all ``length`` but with per_row)


def plan_step(samples: list[SampleSizes], data: DataConfig, flops: FlopModel, ranks: int, minimum: int,
              pad_multiple: int, equal: bool = False, per_row: bool = False) -> StepPlan:
    """``minimum``: micro-batches each rank needs (the interleaved schedule needs >= pp);
    ``equal``: every rank runs the same number (``data.micro_batch_multiple`` makes the count
    divisible); ``per_row``: each row padded to its own length (rounded up to ``pad_multiple``),
    not to the step's longest."""
    packs = pack(samples, data)
    multiple = data.micro_batch_multiple
    packs = split_to(packs, -(-max(len(packs), ranks * minimum) // multiple) * multiple)
    rounded = [min(-(-sum(samples[i].tokens for i in p) // pad_multiple) * pad_multiple, budgets(data)[0])
               for p in packs]
    length = max(rounded)
    row_lengths = rounded if per_row else [length] * len(packs)
    sample_costs = [s.cost(flops) for s in samples]
    pack_costs = [sum(sample_costs[i] for i in p) for p in packs]
    assigned = assign_to_ranks(pack_costs, ranks, minimum, equal)

    def rank_costs(split):
        return [sum(pack_costs[i] for i in mine) for mine in split]

    used = sum(s.tokens for s in samples)
    return StepPlan(packs=packs, length=length, ranks=assigned, padding=1 - used / sum(row_lengths),
                    imbalance_before=imbalance(rank_costs(contiguous_split(len(packs), ranks))),
                    imbalance_after=imbalance(rank_costs(assigned)), row_lengths=row_lengths)
