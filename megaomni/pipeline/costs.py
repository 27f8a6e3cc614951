"""What each action of a step costs: FLOPs from the micro-batches' sizes, seconds from rates.

The FLOP model counts matmuls (2 FLOPs per parameter per token) and attention (QK^T and AV:
4 * hidden FLOPs per query-key pair per layer; causal in the LLM, within a sample; full within an
image or clip in the encoders). Backward costs ``BACKWARD_RATIO`` times forward. Rates turn
FLOPs into seconds: defaults for planning, or fitted to a recorded run (:func:`fit_rates`), which
is how the simulator predicts a machine's step time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megaomni.config import OmniConfig
from megaomni.parallel.stages import encoder_params, llm_layer_costs
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F
from megaomni.pipeline.shares import Item

BACKWARD_RATIO = 2.0


@dataclass(frozen=True)
class FlopModel:
    layer_params: tuple[int, ...]  # matmul parameters per token of each LLM layer
    stage_layers: tuple[int, ...]  # LLM layers of each stage, stage order
    hidden: int
    vocab: int
    encoder_params: dict = field(default_factory=dict)  # modality -> matmul params per transformer row
    encoder_attention: dict = field(default_factory=dict)  # modality -> 4 * layers * hidden
    rows_per_input: dict = field(default_factory=dict)  # modality -> transformer rows per input row

    @classmethod
    def from_config(cls, cfg: OmniConfig, stage_layers: list[int], vocab: int) -> "FlopModel":
        llm = cfg.model.llm
        params, attention, rows = {}, {}, {}
        for name, scale in (("vision", 1.0), ("audio", 0.5)):  # the audio stem halves the rate
            part = getattr(cfg.model, name)
            if part.enabled:
                params[name] = encoder_params(part, llm.hidden_size)
                attention[name] = 4 * part.num_layers * part.hidden_size
                rows[name] = scale
        return cls(tuple(llm_layer_costs(llm)), tuple(stage_layers), llm.hidden_size, vocab,
                   params, attention, rows)

    def llm_forward(self, seq_lens: list[int]) -> list[float]:
        """Forward FLOPs of every stage for a micro-batch of samples of ``seq_lens`` tokens."""
        tokens = sum(seq_lens)
        pairs = sum(n * (n + 1) / 2 for n in seq_lens)
        flops, layer = [], 0
        for count in self.stage_layers:
            stage = sum(2 * p * tokens + 4 * self.hidden * pairs for p in self.layer_params[layer:layer + count])
            flops.append(stage)
            layer += count
        flops[-1] += 2 * self.hidden * self.vocab * tokens  # output layer
        return flops

    def item_forward(self, item: Item) -> float:
        rows = item.size * self.rows_per_input.get(item.modality, 1.0)
        return (2 * self.encoder_params.get(item.modality, 0.0) * rows
                + self.encoder_attention.get(item.modality, 0.0) * rows * rows)


@dataclass(frozen=True)
class Rates:
    """Seconds per FLOP and a fixed cost per action, per compute kind; the link between ranks."""

    per_flop: dict = field(default_factory=lambda: {k: 1 / 400e12 for k in (ENC_F, ENC_B, LLM_F, LLM_B)})
    fixed: dict = field(default_factory=lambda: {k: 20e-6 for k in (ENC_F, ENC_B, LLM_F, LLM_B)})
    bytes_per_s: float = 100e9
    latency: float = 20e-6


@dataclass
class StepCosts:
    """Forward FLOPs of one step's actions and the bytes they move."""

    llm: list[list[float]]  # [micro][stage] forward FLOPs
    items: list[list[float]]  # [micro][item] encoder forward FLOPs
    act_bytes: list[float]  # [micro] one stage's activation (or its gradient)
    item_bytes: list[list[float]]  # [micro][item] encoder outputs

    def flops(self, kind: str, micro: int, stage: int = -1, share: tuple[int, ...] = ()) -> float:
        if kind in (LLM_F, LLM_B):
            forward = self.llm[micro][stage]
        else:
            forward = sum(self.items[micro][i] for i in share)
        return forward * (BACKWARD_RATIO if kind in (LLM_B, ENC_B) else 1.0)


def step_costs(model: FlopModel, micro_batches: list[dict], bytes_per_value: int) -> StepCosts:
    """``micro_batches[m]``: ``seq_lens`` (tokens of each sample), ``tokens`` (the row's length,
    padding included: what is sent between stages), ``items`` (:class:`Item` list)."""
    return StepCosts(
        llm=[model.llm_forward(mb["seq_lens"]) for mb in micro_batches],
        items=[[model.item_forward(it) for it in mb["items"]] for mb in micro_batches],
        act_bytes=[mb["tokens"] * model.hidden * bytes_per_value for mb in micro_batches],
        item_bytes=[[it.outputs * model.hidden * bytes_per_value for it in mb["items"]] for mb in micro_batches],
    )


def fit_rates(samples: dict[str, list[tuple[float, float]]], base: Rates = Rates()) -> Rates:
    """Least-squares ``seconds = per_flop * flops + fixed`` per kind from measured
    (flops, seconds) pairs; a kind with too few or degenerate samples keeps a pure ratio."""
    per_flop, fixed = dict(base.per_flop), dict(base.fixed)
    for kind, points in samples.items():
        if not points:
            continue
        n = len(points)
        mean_x = sum(x for x, _ in points) / n
        mean_y = sum(y for _, y in points) / n
        var = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var > 0 else 0.0
        intercept = mean_y - slope * mean_x
        if slope <= 0 or intercept < 0:
            slope, intercept = (mean_y / mean_x if mean_x > 0 else 0.0), 0.0
        per_flop[kind], fixed[kind] = slope, intercept
    return Rates(per_flop, fixed, base.bytes_per_s, base.latency)
