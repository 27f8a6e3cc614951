"""Cost and rate builders shared by the pipeline tests."""

from __future__ import annotations

import random

from megaomni.pipeline.costs import Rates, StepCosts
from megaomni.pipeline.plan import COMPUTE


def ideal_rates(latency: float = 0.0, bytes_per_s: float = 1e300, floor: float = 0.0) -> Rates:
    """One second per FLOP, no floor, and (by default) a free link: times are FLOP counts."""
    return Rates(per_flop={k: 1.0 for k in COMPUTE}, floor={k: floor for k in COMPUTE},
                 bytes_per_s=bytes_per_s, latency=latency)


def uniform_costs(pp: int, vpp: int, num_micro: int, f: float, items: list[list[float]] | None = None,
                  act_bytes: float = 0.0, item_bytes: float = 0.0) -> StepCosts:
    """Every virtual stage's forward costs ``f / vpp`` (a rank's LLM forward of a micro-batch: ``f``)."""
    items = items if items is not None else [[] for _ in range(num_micro)]
    return StepCosts(llm=[[f / vpp] * (pp * vpp) for _ in range(num_micro)], items=items,
                     act_bytes=[act_bytes] * num_micro,
                     item_bytes=[[item_bytes] * len(it) for it in items])


def random_costs(rng: random.Random, pp: int, vpp: int, counts: list[int]) -> StepCosts:
    """Random stage and item FLOPs (micro-batches with ``counts[m]`` media items, 0 allowed)."""
    items = [[rng.uniform(0.1, 3.0) for _ in range(n)] for n in counts]
    return StepCosts(llm=[[rng.uniform(0.5, 1.5) for _ in range(pp * vpp)] for _ in counts], items=items,
                     act_bytes=[rng.uniform(0.01, 0.1) for _ in counts],
                     item_bytes=[[rng.uniform(0.001, 0.05) for _ in it] for it in items])


def valid_groups(pp: int, num_micro: int) -> list[int]:
    """Micro-batch group sizes megatron-core's interleaved schedule accepts: within [pp, M], and a
    last group that is whole or at least ``pp`` long (else it raises)."""
    return [g for g in range(pp, num_micro + 1) if not 0 < num_micro % g < pp]
