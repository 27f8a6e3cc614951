"""The LLM backbone: megatron-core's GPTModel (dense or MoE), RMSNorm, SwiGLU, GQA, RoPE."""

from __future__ import annotations

from typing import Optional

from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megaomni.config import LLMConfig
from megaomni.layers.specs import llm_block_spec
from megaomni.ops.cross_entropy import chunked_cross_entropy, full_cross_entropy


class LLM(GPTModel):
    """GPTModel whose loss (``loss``, a ``train.cross_entropy`` choice) may be megaomni's: without
    the full logits (``chunked``) or torch's kernels over them (``torch``), both on one
    tensor-parallel rank (megaomni.ops.cross_entropy). Everything else, logits included (no
    labels), is megatron-core's."""

    def __init__(self, *args, loss: str = "megatron", **kwargs):
        super().__init__(*args, **kwargs)
        self.loss = loss

    def compute_language_model_loss(self, labels, logits):
        if self.loss == "torch":
            return full_cross_entropy(logits, labels)
        return super().compute_language_model_loss(labels, logits)

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        if not (self.loss == "chunked" and self.post_process and labels is not None
                and self.config.mtp_num_layers is None and kwargs.get("inference_context") is None):
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights \
            else self.output_layer.weight
        return chunked_cross_entropy(hidden_states, weight, labels)


def build_llm(cfg: LLMConfig, config: TransformerConfig, vocab_size: int, pre_process: bool = True,
              post_process: bool = True, vp_stage: Optional[int] = None, loss: str = "megatron") -> LLM:
    """The LLM part of one pipeline stage (all of it without pipelining)."""
    return LLM(
        config=config,
        transformer_layer_spec=llm_block_spec(config, vp_stage=vp_stage, grouped_gemm=cfg.moe.grouped_gemm),
        vocab_size=vocab_size,
        max_sequence_length=cfg.max_seq_len,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        # RoPE from explicit position ids (megatron-core's position-id rotary, "mrope", with one
        # section: build.py), so the samples packed in one row each count positions from 0.
        position_embedding_type="mrope",
        rotary_base=cfg.rotary_base,
        parallel_output=True,
        # The omni model merges encoder outputs into the full-length embeddings first; the
        # sequence is then split for context / sequence parallelism (megaomni.parallel.sequence).
        scatter_embedding_sequence_parallel=False,
        vp_stage=vp_stage,
        loss=loss,
    )
