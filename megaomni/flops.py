"""The one FLOP model: what the stage split, the data-parallel balancer and the pipeline planner
price work with.

Matmuls cost 2 FLOPs per parameter per row they touch; attention (QK^T and AV) costs
``4 * hidden`` FLOPs per query-key pair per layer: causal in the LLM, within each packed sample;
full within an image or clip in the encoders (each modality gives its encoder's terms,
:meth:`~megaomni.media.modality.Modality.flops`). The output layer costs ``2 * hidden * vocab``
per token. A backward costs ``BACKWARD_RATIO`` forwards.

Model FLOPs (what MFU counts, :meth:`FlopModel.training`): forward and backward of every matmul
of the encoders, projectors and LLM, attention over the actual packed lengths, and the output
layer; recomputation, padding, norms and elementwise work are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megaomni.config import LLMConfig, ModelConfig
from megaomni.media import registry

BACKWARD_RATIO = 2.0
TRAINING_RATIO = 1.0 + BACKWARD_RATIO  # forward and backward


def llm_layer_costs(llm: LLMConfig) -> list[int]:
    """Matmul parameters touched per token by each LLM layer (active experts only for MoE)."""
    h, heads, groups = llm.hidden_size, llm.num_attention_heads, llm.num_query_groups
    d = llm.head_dim or h // heads
    attention = 2 * h * heads * d + 2 * h * d * groups  # q, o and the grouped k, v
    moe = llm.moe
    dense_mlp = 3 * h * llm.ffn_hidden_size  # SwiGLU: gate, up, down
    expert_ffn = moe.ffn_hidden_size or llm.ffn_hidden_size
    moe_mlp = moe.top_k * 3 * h * expert_ffn + 3 * h * moe.shared_expert_ffn_hidden_size + h * moe.num_experts
    return [attention + (moe_mlp if moe.enabled and i % moe.layer_freq == 0 else dense_mlp)
            for i in range(llm.num_layers)]


@dataclass(frozen=True)
class FlopModel:
    """Forward FLOPs of the model's parts. The fields are what a recorded timeline stores
    (``timelines/iter_N.json``), so a replay prices steps as the run did."""

    layer_params: tuple[int, ...]  # matmul parameters per token of each LLM layer
    stage_layers: tuple[int, ...]  # LLM layers of each pipeline stage, stage order (() : one stage)
    hidden: int
    vocab: int
    encoder_params: dict = field(default_factory=dict)  # modality -> matmul params per transformer row
    encoder_attention: dict = field(default_factory=dict)  # modality -> 4 * layers * hidden
    rows_per_input: dict = field(default_factory=dict)  # modality -> transformer rows per input row
    attention_width: int = 0  # query heads x head dim (0: hidden; they differ where head_dim is set)
    extra_rows: dict = field(default_factory=dict)  # modality -> transformer rows per item besides its inputs'

    @classmethod
    def from_config(cls, model: ModelConfig, vocab: int = 0, stage_layers: list[int] = ()) -> "FlopModel":
        """``vocab``: the output layer's width (0: not priced); ``stage_layers``: () for one stage."""
        llm = model.llm
        encoders = {m.name: m.flops(getattr(model, m.name), llm.hidden_size) for m in registry.enabled(model)}
        width = llm.num_attention_heads * llm.head_dim if llm.head_dim else 0
        return cls(tuple(llm_layer_costs(llm)), tuple(stage_layers) or (llm.num_layers,), llm.hidden_size, vocab,
                   {n: e.params for n, e in encoders.items()}, {n: e.attention for n, e in encoders.items()},
                   {n: e.rows_per_input for n, e in encoders.items()}, width,
                   {n: e.extra_rows for n, e in encoders.items()})

    def encoder_params_per_row(self) -> int:
        """Matmul parameters of the enabled encoders and projectors (per encoder row): what the
        stage split weighs the first stage with when it holds the encoders."""
        return sum(self.encoder_params.values())

    def llm_forward(self, seq_lens: list[int]) -> list[float]:
        """Forward FLOPs of every stage for a micro-batch of samples of ``seq_lens`` tokens."""
        flops = self.llm_layers_forward(seq_lens)
        flops[-1] += 2 * self.hidden * self.vocab * sum(seq_lens)  # output layer
        return flops

    def llm_layers_forward(self, seq_lens: list[int]) -> list[float]:
        """Forward FLOPs of every stage's transformer layers (no output layer)."""
        tokens = sum(seq_lens)
        pairs = sum(n * (n + 1) / 2 for n in seq_lens)
        flops, layer = [], 0
        for count in self.stage_layers:
            width = self.attention_width or self.hidden
            stage = sum(2 * p * tokens + 4 * width * pairs for p in self.layer_params[layer:layer + count])
            flops.append(stage)
            layer += count
        return flops

    def item_forward(self, modality: str, rows: int) -> float:
        """Forward FLOPs of one media item of ``rows`` encoder input rows."""
        return self.items_forward(modality, 1, rows, rows * rows)

    def items_forward(self, modality: str, items: int, rows: int, squares: int) -> float:
        """Forward FLOPs of ``items`` media items of ``rows`` input rows in all, ``squares`` the sum
        of their rows squared: each item's ``n = rows * rows_per_input + extra_rows`` transformer
        rows cost ``2 * params * n + attention * n^2``, summed."""
        per, extra = self.rows_per_input.get(modality, 1.0), self.extra_rows.get(modality, 0.0)
        n = per * rows + extra * items
        n_squared = per * per * squares + 2 * per * extra * rows + extra * extra * items
        return 2 * self.encoder_params.get(modality, 0.0) * n + self.encoder_attention.get(modality, 0.0) * n_squared

    def training(self, seq_lens: list[int], items: list[tuple[str, int]]) -> float:
        """Model FLOPs (forward and backward, output layer included) of a micro-batch of samples of
        ``seq_lens`` tokens and media ``items`` ((modality, rows) each)."""
        return TRAINING_RATIO * (sum(self.llm_forward(seq_lens)) + sum(self.item_forward(m, r) for m, r in items))
