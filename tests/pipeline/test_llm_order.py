"""``llm_order`` against megatron-core's own schedule: its table (``get_schedule_table``), its
warm-up counts (``get_pp_rank_microbatches``, checked against the formula) and its 1F1B loop."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches, get_schedule_table

from megaomni.pipeline.llm_order import BACKWARD, FORWARD, llm_order

from .helpers import valid_groups


def megatron_warmup(pp: int, vpp: int, rank: int, num_micro: int, group: int) -> int:
    """Warm-up forwards, as megatron-core computes them, and as its formula says they are."""
    comm = SimpleNamespace(pp_group=SimpleNamespace(size=lambda: pp, rank=lambda: rank),
                           virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None)
    total, _, warmup, remaining = get_pp_rank_microbatches(num_micro, vpp, group, p2p_communicator=comm)
    if pp == 1:
        formula = 0  # megatron-core's forward_backward_no_pipelining
    elif vpp == 1:
        formula = pp - rank - 1
    else:
        formula = (pp - rank - 1) * 2 + (vpp - 1) * group
    assert warmup == min(formula, num_micro * vpp)
    assert total == num_micro * vpp and remaining == total - warmup
    return warmup


def reference_order(pp: int, vpp: int, rank: int, num_micro: int, group: int) -> list[tuple[str, int, int]]:
    """Megatron-core's order for one rank: ``warmup`` forwards, then forward ``warmup + i`` and
    backward ``i`` alternately, then the remaining backwards. Forward ``k`` runs
    ``get_schedule_table``'s entry ``k``; backward ``k`` runs chunk ``vpp - 1 - chunk(k)`` on the
    oldest micro-batch that chunk has not yet back-propagated (megatron pops its saved inputs
    first in, first out)."""
    table = get_schedule_table(num_micro, vpp, group)
    warmup = megatron_warmup(pp, vpp, rank, num_micro, group)
    saved = [deque() for _ in range(vpp)]  # per chunk: micro-batches run forward, not yet backward

    def forward(k):
        micro, chunk = table[k]
        saved[chunk].append(micro)
        return (FORWARD, micro, chunk * pp + rank)

    def backward(k):
        chunk = vpp - 1 - table[k][1]
        return (BACKWARD, saved[chunk].popleft(), chunk * pp + rank)

    total = len(table)
    order = [forward(k) for k in range(warmup)]
    for i in range(total - warmup):
        order += [forward(warmup + i), backward(i)]
    return order + [backward(k) for k in range(total - warmup, total)]


CASES = [(1, 1, m, 1) for m in (1, 3, 8)]
CASES += [(pp, 1, m, pp) for pp in (2, 3, 4, 8) for m in (1, 2, pp, pp + 1, 2 * pp + 3, 16)]
CASES += [(pp, vpp, m, g) for pp in (2, 4) for vpp in (2, 3, 4) for m in (pp, 2 * pp, 7, 12)
          for g in valid_groups(pp, m)]


@pytest.mark.parametrize("pp,vpp,num_micro,group", CASES)
def test_matches_megatron(pp, vpp, num_micro, group):
    for rank in range(pp):
        order = llm_order(pp, vpp, rank, num_micro, group)
        assert order == reference_order(pp, vpp, rank, num_micro, group), (pp, vpp, num_micro, group, rank)
        # every (micro-batch, stage) of this rank exactly once forward and once backward
        stages = [c * pp + rank for c in range(vpp)]
        want = sorted((m, s) for m in range(num_micro) for s in stages)
        assert sorted((m, s) for k, m, s in order if k == FORWARD) == want
        assert sorted((m, s) for k, m, s in order if k == BACKWARD) == want
        position = {(k, m, s): i for i, (k, m, s) in enumerate(order)}
        assert all(position[(FORWARD, m, s)] < position[(BACKWARD, m, s)] for m, s in want)


@pytest.mark.parametrize("pp,num_micro", [(2, 8), (4, 8), (4, 3), (8, 16)])
def test_one_f_one_b_memory(pp, num_micro):
    """1F1B holds at most ``pp - rank`` micro-batches' activations on a rank."""
    for rank in range(pp):
        live = peak = 0
        for kind, _, _ in llm_order(pp, 1, rank, num_micro):
            live += 1 if kind == FORWARD else -1
            peak = max(peak, live)
        assert peak == min(pp - rank, num_micro)


def test_default_group_is_pp():
    assert llm_order(4, 2, 1, 8) == llm_order(4, 2, 1, 8, chunk_run=4)
