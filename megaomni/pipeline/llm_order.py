"""The order in which a pipeline rank runs its LLM stages: megatron-core's 1F1B schedule (one
model chunk per rank) and its interleaved schedule (several), reproduced as lists so that every
policy keeps megatron-core's LLM order and memory profile and changes only the encoder work."""

from __future__ import annotations

FORWARD, BACKWARD = "F", "B"


def chunk_run_length(num_microbatches: int, pp: int) -> int:
    """Micro-batches a virtual stage runs in a row in the interleaved schedule (megatron-core's
    ``microbatch_group_size_per_vp_stage``): the smallest in [pp, M] whose last run is empty or
    >= pp (megatron-core refuses others), so a packed step may have any number M >= pp of
    micro-batches."""
    return next(g for g in range(pp, num_microbatches + 1)
                if num_microbatches % g == 0 or num_microbatches % g >= pp)


def _schedule_table(num_micro: int, vpp: int, chunk_run: int) -> list[tuple[int, int]]:
    """(micro-batch, chunk) of every virtual micro-batch in forward order (megatron-core's
    ``get_schedule_table``): ``chunk_run`` micro-batches a virtual stage runs in a row."""
    table = []
    for first in range(0, num_micro, chunk_run):
        last = num_micro if first + chunk_run >= num_micro else first + chunk_run
        table += [(m, c) for c in range(vpp) for m in range(first, last)]
    return table


def llm_order(pp: int, vpp: int, rank: int, num_micro: int, chunk_run: int = 0) -> list[tuple[str, int, int]]:
    """Rank ``rank``'s LLM work as (``"F"`` | ``"B"``, micro-batch, stage), in megatron-core's
    order. ``chunk_run``: micro-batches a virtual stage runs in a row (interleaved only; 0: ``pp``)."""
    if vpp == 1:
        table = [(m, 0) for m in range(num_micro)]
        warmup = min(pp - rank - 1, num_micro)
    else:
        table = _schedule_table(num_micro, vpp, chunk_run or pp)
        warmup = min((pp - rank - 1) * 2 + (vpp - 1) * (chunk_run or pp), len(table))
    forwards = [(FORWARD, m, c * pp + rank) for m, c in table]
    # Backwards walk the same table with the chunks reversed.
    backwards = [(BACKWARD, m, (vpp - 1 - c) * pp + rank) for m, c in table]
    order = forwards[:warmup]
    for i in range(len(table) - warmup):
        order += [forwards[warmup + i], backwards[i]]
    return order + backwards[len(table) - warmup:]
