"""What each action of a step costs: FLOPs from the micro-batches' sizes (the one FLOP model,
megaomni.flops), seconds from rates. Backward costs ``BACKWARD_RATIO`` times forward. Rates turn
FLOPs into seconds, above a floor per model call (the host's time to issue it): defaults for
planning, or fitted to a recorded run (:func:`fit_rates`), which is how the simulator predicts a
machine's step time and the planner prices encoder calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from megaomni.flops import BACKWARD_RATIO, FlopModel
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F


@dataclass(frozen=True)
class Rates:
    """What an action of each compute kind takes: ``max(calls * floor, per_flop * flops)``
    seconds. The floor is the host's time to issue one model call (launching every layer's
    kernels): measured on an H200, a 2B omni model's encoder forward takes ~40 ms for 0.02
    TFLOP and for 8, the GPU waiting on the host until the work outgrows it. Plus the link
    between ranks."""

    per_flop: dict = field(default_factory=lambda: {k: 1 / 400e12 for k in (ENC_F, ENC_B, LLM_F, LLM_B)})
    floor: dict = field(default_factory=lambda: {k: 20e-6 for k in (ENC_F, ENC_B, LLM_F, LLM_B)})
    bytes_per_s: float = 100e9
    latency: float = 20e-6

    def seconds(self, kind: str, flops: float, calls: int = 1) -> float:
        """``calls``: the model calls an encoder action makes (one per modality it encodes),
        each paying the floor; the GPU work overlaps their issue."""
        return max(self.floor[kind] * calls, self.per_flop[kind] * flops)


@dataclass
class StepCosts:
    """Forward FLOPs of one step's actions and the bytes they move."""

    llm: list[list[float]]  # [micro][stage] forward FLOPs
    items: list[list[float]]  # [micro][item] encoder forward FLOPs
    act_bytes: list[float]  # [micro] one stage's activation (or its gradient)
    item_bytes: list[list[float]]  # [micro][item] encoder outputs
    modalities: list[list[str]] = field(default_factory=list)  # [micro][item]; empty: one encoder

    def flops(self, kind: str, micro: int, stage: int = -1, share: tuple[int, ...] = ()) -> float:
        if kind in (LLM_F, LLM_B):
            forward = self.llm[micro][stage]
        else:
            forward = sum(self.items[micro][i] for i in share)
        return forward * (BACKWARD_RATIO if kind in (LLM_B, ENC_B) else 1.0)

    def encoder_call(self, kind: str, parts: list[tuple[int, tuple[int, ...]]]) -> tuple[float, int]:
        """FLOPs and model calls (one per modality) of one encoder action over ``parts``:
        (micro-batch, share) pairs encoded together."""
        flops = sum(self.flops(kind, m, share=share) for m, share in parts)
        if not self.modalities:
            return flops, int(any(share for _, share in parts))
        return flops, len({self.modalities[m][i] for m, share in parts for i in share})


def step_costs(model: FlopModel, micro_batches: list[dict], bytes_per_value: int) -> StepCosts:
    """``micro_batches[m]``: ``seq_lens`` (tokens of each sample), ``tokens`` (the row's length,
    padding included: what is sent between stages), ``items`` (:class:`Item` list)."""
    return StepCosts(
        llm=[model.llm_forward(mb["seq_lens"]) for mb in micro_batches],
        items=[[model.item_forward(it.modality, it.size) for it in mb["items"]] for mb in micro_batches],
        act_bytes=[mb["tokens"] * model.hidden * bytes_per_value for mb in micro_batches],
        item_bytes=[[it.outputs * model.hidden * bytes_per_value for it in mb["items"]] for mb in micro_batches],
        modalities=[[it.modality for it in mb["items"]] for mb in micro_batches],
    )


def fit_rates(samples: dict[str, list[tuple[float, float]]], base: Rates = Rates()) -> Rates:
    """Per kind, the ``floor`` and ``per_flop`` of :class:`Rates` that fit measured (flops,
    seconds) pairs with the least absolute error (a few stalled actions do not drag it). Each
    pair is per model call: an action of ``c`` calls gives (flops / c, seconds / c), since
    ``max(c * floor, rate * flops) / c = max(floor, rate * flops / c)``. Searched over a grid:
    floors from the quantiles of the seconds (and 0), rates from the quantiles of seconds per
    FLOP. Kinds without samples, and the link, keep ``base``'s values."""
    per_flop, floor = dict(base.per_flop), dict(base.floor)
    grid = np.linspace(0.0, 1.0, 41)
    for kind, points in samples.items():
        x, y = (np.array(v, dtype=np.float64) for v in zip(*points)) if points else (np.zeros(0),) * 2
        if not (x > 0).any():
            continue
        floors = np.concatenate([[0.0], np.quantile(y, grid)])
        slopes = np.quantile(y[x > 0] / x[x > 0], grid)
        predicted = np.maximum(floors[:, None, None], slopes[None, :, None] * x[None, None, :])
        i, j = np.unravel_index(np.argmin(np.abs(predicted - y).sum(-1)), predicted.shape[:2])
        floor[kind], per_flop[kind] = float(floors[i]), float(slopes[j])
    return Rates(per_flop, floor, base.bytes_per_s, base.latency)
