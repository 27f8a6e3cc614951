"""The parallel layout as megatron-core configuration: the ``TransformerConfig`` fields of the
LLM and of the encoders, and the process-group sizes. One place turns ``parallel.*`` and
``pipeline.*`` into megatron-core's terms."""

from __future__ import annotations

from megaomni.config import OmniConfig, ParallelConfig
from megaomni.parallel.stages import layers_per_stage, megatron_layout


def llm_parallel_fields(cfg: OmniConfig, vocab_size: int) -> dict:
    par = cfg.parallel
    fields = dict(
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        context_parallel_size=par.cp,
        expert_model_parallel_size=par.ep,
        sequence_parallel=par.sp,
    )
    moe = cfg.model.llm.moe
    shards = par.cp * (par.tp if par.sp else 1)
    if moe.enabled and moe.balancing == "aux_loss" and shards > 1:
        # With per-token loss, megatron-core scales each rank's share of the load-balancing loss
        # by the tokens that rank holds, i.e. 1/shards of the whole sequence under sequence or
        # context parallelism: without this the aux-loss gradient would shrink by that factor.
        fields["moe_aux_loss_coeff"] = moe.aux_loss_coeff * shards
    if par.pp > 1:
        counts = layers_per_stage(cfg, vocab_size)
        # All micro-batches of a step share one length (OmniDataLoader.next_step), so stages
        # exchange fixed shapes: megatron-core's interleaved schedule hangs with variable ones.
        fields.update(pipeline_model_parallel_layout=megatron_layout(counts))
    if par.vpp > 1:
        fields.update(
            virtual_pipeline_model_parallel_size=par.vpp,
            # megatron-core's interleaved schedule with batched p2p gives wrong numbers without
            # an error on 2 stages (NVIDIA/Megatron-LM #750, #1450; shared/notes); never batch.
            batch_p2p_comm=False,
            overlap_p2p_comm=False,
        )
    return fields


def encoder_parallel_fields(par: ParallelConfig) -> dict:
    """Encoders: tensor parallel by ``parallel.encoder.tp``, no pipeline, context or sequence
    parallelism (their inputs are whole images/clips on the first stage)."""
    return dict(tensor_model_parallel_size=par.encoder.tp)
