"""Splitting the omni model into pipeline stages, encoders and LLM layers seen together.

Encoders live on the first stage (megatron-core's LLaVA arrangement; ``pipeline.schedule=joint``
puts them on every pipeline rank instead, and they weigh on no stage), with the LLM's embedding;
the output layer lives on the last. The automatic split gives each (virtual) stage a contiguous
run of LLM layers so that the largest stage cost is as small as possible, where a stage's cost
counts the matmul parameters it runs per token (a parameter costs 2 FLOPs per token it touches):
the encoders and the output layer weigh on the stages that hold them, so the first stage gets
fewer LLM layers. ``pipeline.layers_per_stage`` overrides the split.

Stage order is megatron-core's: virtual stage ``v`` of pipeline rank ``r`` is stage ``v * pp + r``.
"""

from __future__ import annotations

from megaomni.config import OmniConfig
from megaomni.flops import FlopModel


def balanced_split(costs: list[int], stages: int, first_extra: int = 0, last_extra: int = 0) -> list[int]:
    """Layer counts (each >= 1) of ``stages`` contiguous groups of ``costs`` minimising the
    largest group cost, ``first_extra`` / ``last_extra`` added to the first / last group."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} stages of >= 1 layer")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def group(stage: int, start: int, end: int) -> int:
        extra = (first_extra if stage == 0 else 0) + (last_extra if stage == stages - 1 else 0)
        return prefix[end] - prefix[start] + extra

    # best[s][e]: the (largest group cost, sum of squared group costs) of splitting layers
    # [0, e) into s + 1 groups, smallest first: the largest stage is as small as possible, and
    # among such splits the other stages are as even as the split can make them (without the
    # second key, every stage but the largest may be left lopsided). Ties keep the earliest
    # cut, so results are deterministic.
    inf = (float("inf"), float("inf"))
    best = [[inf] * (n + 1) for _ in range(stages)]
    cut = [[0] * (n + 1) for _ in range(stages)]
    for e in range(1, n + 1):
        best[0][e] = (group(0, 0, e), group(0, 0, e) ** 2)
    for s in range(1, stages):
        for e in range(s + 1, n + 1):
            for start in range(s, e):
                g = group(s, start, e)
                prev = best[s - 1][start]
                value = (max(prev[0], g), prev[1] + g * g)
                if value < best[s][e]:
                    best[s][e], cut[s][e] = value, start
    counts, end = [], n
    for s in range(stages - 1, 0, -1):
        start = cut[s][end]
        counts.append(end - start)
        end = start
    counts.append(end)
    return counts[::-1]


def layers_per_stage(cfg: OmniConfig, vocab_size: int) -> list[int]:
    """LLM layers of each of the ``pp * vpp`` stages (stage order), configured or automatic."""
    par = cfg.parallel
    if cfg.pipeline.layers_per_stage:
        return list(cfg.pipeline.layers_per_stage)
    flops = FlopModel.from_config(cfg.model, vocab_size)
    # The joint schedule spreads encoder work over every pipeline rank: only the baseline loads
    # the first stage with it.
    first = flops.encoder_params_per_row() if cfg.pipeline.schedule == "megatron" else 0
    return balanced_split(list(flops.layer_params), par.pp * par.vpp, first_extra=first,
                          last_extra=flops.hidden * vocab_size)


def megatron_layout(counts: list[int]) -> list[list[str]]:
    """megatron-core's ``pipeline_model_parallel_layout``: the layer types of every stage."""
    layout = [["decoder"] * n for n in counts]
    layout[0].insert(0, "embedding")
    layout[-1].append("loss")
    return layout
