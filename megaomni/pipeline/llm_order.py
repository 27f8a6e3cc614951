"""The order in which a pipeline rank runs its LLM stages: megatron-core's 1F1B schedule (one
model chunk per rank) and its interleaved schedule (several), reproduced as lists so that every
policy keeps megatron-core's LLM order and memory profile and changes only the encoder work."""

from __future__ import annotations

FORWARD, BACKWARD = "F", "B"


def interleave_group(num_microbatches: int, pp: int) -> int:
    """Micro-batches the interleaved schedule runs per virtual stage in a row: the smallest in
    [pp, M] whose last group is empty or >= pp (megatron-core refuses others), so a packed step
    may have any number M >= pp of micro-batches."""
    return next(g for g in range(pp, num_microbatches + 1)
                if num_microbatches % g == 0 or num_microbatches % g >= pp)


def _schedule_table(num_micro: int, vpp: int, group: int) -> list[tuple[int, int]]:
    """(micro-batch, chunk) of every virtual micro-batch in forward order (megatron-core's
    ``get_schedule_table``): ``group`` micro-batches per chunk in a row."""
    table = []
    for first in range(0, num_micro, group):
        last = num_micro if first + group >= num_micro else first + group
        table += [(m, c) for c in range(vpp) for m in range(first, last)]
    return table


def llm_order(pp: int, vpp: int, rank: int, num_micro: int, group: int = 0) -> list[tuple[str, int, int]]:
    """Rank ``rank``'s LLM work as (``"F"`` | ``"B"``, micro-batch, stage), in megatron-core's
    order. ``group``: micro-batches per virtual stage in a row (interleaved only; 0: ``pp``)."""
    if vpp == 1:
        table = [(m, 0) for m in range(num_micro)]
        warmup = min(pp - rank - 1, num_micro)
    else:
        table = _schedule_table(num_micro, vpp, group or pp)
        warmup = min((pp - rank - 1) * 2 + (vpp - 1) * (group or pp), len(table))
    forwards = [(FORWARD, m, c * pp + rank) for m, c in table]
    # Backwards walk the same table with the chunks reversed.
    backwards = [(BACKWARD, m, (vpp - 1 - c) * pp + rank) for m, c in table]
    order = forwards[:warmup]
    for i in range(len(table) - warmup):
        order += [forwards[warmup + i], backwards[i]]
    return order + backwards[len(table) - warmup:]
