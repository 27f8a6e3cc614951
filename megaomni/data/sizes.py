"""What the step planner knows of a sample before decoding it: its LLM tokens and, per modality,
its items' count, rows and squared rows (an encoder's attention FLOPs grow with the square of an
item's rows, so the three sums price a sample's encoders exactly)."""

from __future__ import annotations

from dataclasses import dataclass

from megaomni.flops import TRAINING_RATIO, FlopModel


@dataclass(frozen=True)
class SampleSizes:
    tokens: int
    media: tuple[tuple[str, int, int, int], ...] = ()  # (modality, items, rows, sum of rows^2), items > 0

    @classmethod
    def of(cls, tokens: int, media: dict[str, list[int]]) -> "SampleSizes":
        """From each modality's item rows."""
        return cls(tokens, tuple((name, len(rows), sum(rows), sum(r * r for r in rows))
                                 for name, rows in media.items() if rows))

    def rows(self, modality: str) -> int:
        return sum(rows for name, _, rows, _ in self.media if name == modality)

    def cost(self, flops: FlopModel) -> float:
        """Training FLOPs (forward and backward) of the sample's LLM layers and encoders. The output
        layer is left out, as the balancer always has (counting it would move micro-batches
        between ranks)."""
        cost = TRAINING_RATIO * sum(flops.llm_layers_forward([self.tokens]))
        for name, items, rows, squares in self.media:
            cost += TRAINING_RATIO * flops.items_forward(name, items, rows, squares)
        return cost
