"""The cost model of a sample, and the split of a step's packed micro-batches over the
data-parallel ranks that equalises it.

A sample costs its training FLOPs (forward + backward = 3x forward), estimated from its sizes:
the LLM's matmuls (2 FLOPs per parameter per token) plus causal attention (quadratic in the
sample's tokens: packed samples attend only to themselves), and each encoder's matmuls per
patch / frame plus its bidirectional attention within each image / clip. Every rank computes the
same assignment from the same step plan, so no rank coordinates the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from megaomni.config import OmniConfig
from megaomni.data.packing import balanced_assign
from megaomni.data.sample import Sample
from megaomni.parallel.stages import encoder_params, llm_layer_costs


@dataclass(frozen=True)
class CostModel:
    llm_per_token: float
    llm_attention: float  # per (query, key) pair under the causal mask
    vision_per_patch: float
    vision_attention: float
    audio_per_frame: float
    audio_attention: float

    @classmethod
    def from_config(cls, cfg: OmniConfig) -> "CostModel":
        llm, vision, audio = cfg.model.llm, cfg.model.vision, cfg.model.audio
        # Per layer, QK^T and AV cost 2 * 2 * hidden FLOPs per (query, key) pair, forward.
        return cls(
            llm_per_token=3 * 2 * sum(llm_layer_costs(llm)),
            llm_attention=3 * 4 * llm.num_layers * llm.hidden_size,
            vision_per_patch=3 * 2 * encoder_params(vision, llm.hidden_size) if vision.enabled else 0.0,
            vision_attention=3 * 4 * vision.num_layers * vision.hidden_size if vision.enabled else 0.0,
            # The audio stem halves the frame rate before the transformer.
            audio_per_frame=3 * 2 * encoder_params(audio, llm.hidden_size) / 2 if audio.enabled else 0.0,
            audio_attention=3 * 4 * audio.num_layers * audio.hidden_size / 4 if audio.enabled else 0.0,
        )

    def sample(self, sample: Sample) -> float:
        n = sample.tokens.numel()
        cost = self.llm_per_token * n + self.llm_attention * n * (n + 1) / 2
        for patches, _ in sample.images:
            cost += self.vision_per_patch * len(patches) + self.vision_attention * len(patches) ** 2
        for frames in sample.audios:
            cost += self.audio_per_frame * len(frames) + self.audio_attention * len(frames) ** 2
        return cost


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
