"""Combination rules of the parallel layout, checked before any process group or model exists.

Each failing rule raises :class:`~megaomni.config.ConfigError` naming the field, its value and the
rule (and, where there is a short list, the valid values).
"""

from __future__ import annotations

from megaomni.checks import divisors, require
from megaomni.config import OmniConfig
from megaomni.media import registry
from megaomni.ops.grouped_gemm import IMPLEMENTATIONS as GROUPED_GEMMS


def _check_tensor(cfg: OmniConfig) -> None:
    par, llm = cfg.parallel, cfg.model.llm
    for name, value in (("num_attention_heads", llm.num_attention_heads),
                        ("num_query_groups", llm.num_query_groups),
                        ("ffn_hidden_size", llm.ffn_hidden_size)):
        require(value % par.tp == 0, f"parallel.tp={par.tp}: must divide model.llm.{name}={value} "
                f"(valid: {divisors(value)})")
    require(not par.sp or par.tp > 1, "parallel.sp=true: sequence parallelism splits activations over "
            "the tensor-parallel ranks and needs parallel.tp > 1")
    enc_tp = par.encoder.tp
    require(enc_tp in (1, par.tp), f"parallel.encoder.tp={enc_tp}: must be 1 (encoders replicated over "
            f"the LLM's tensor-parallel ranks) or parallel.tp={par.tp}")
    for modality in registry.enabled(cfg.model):
        part = getattr(cfg.model, modality.name)
        for field in ("num_attention_heads", "ffn_hidden_size"):
            value = getattr(part, field)
            require(value % enc_tp == 0, f"parallel.encoder.tp={enc_tp}: must divide model.{modality.name}.{field}="
                    f"{value} (valid: {divisors(value)})")


def _check_pipeline(cfg: OmniConfig) -> None:
    par, layers = cfg.parallel, cfg.model.llm.num_layers
    stages = par.pp * par.vpp
    require(par.vpp == 1 or par.pp > 1, f"parallel.vpp={par.vpp}: virtual pipeline stages need parallel.pp > 1")
    split = cfg.pipeline.layers_per_stage
    if split:
        require(len(split) == stages, f"pipeline.layers_per_stage={split}: needs parallel.pp*vpp={stages} "
                "entries, one per (virtual) stage")
        require(all(n >= 1 for n in split), f"pipeline.layers_per_stage={split}: every stage needs >= 1 layer")
        require(sum(split) == layers, f"pipeline.layers_per_stage={split}: sums to {sum(split)}, "
                f"model.llm.num_layers={layers}")
    else:
        require(layers >= stages, f"model.llm.num_layers={layers}: fewer than the parallel.pp*vpp={stages} "
                "pipeline stages (each stage needs >= 1 layer)")
    pipe = cfg.pipeline
    require(pipe.schedule in ("megatron", "joint"),
            f"pipeline.schedule={pipe.schedule!r}: use megatron (encoders on stage 0) or joint")
    require(pipe.executor in ("auto", "plan"), f"pipeline.executor={pipe.executor!r}: use auto or plan")
    require(pipe.encoder_group >= 0, f"pipeline.encoder_group={pipe.encoder_group}: use 0 (the planner chooses) "
            "or N > 0 micro-batches per encoder call")
    require(pipe.sync_debug in ("", "warn", "error"),
            f"pipeline.sync_debug={pipe.sync_debug!r}: use '' (off), warn or error")
    require(pipe.profile_steps >= 0, f"pipeline.profile_steps={pipe.profile_steps}: use 0 (FLOP model only) or N > 0")
    require(pipe.timeline_interval >= 0, f"pipeline.timeline_interval={pipe.timeline_interval}: use 0 (off) or N > 0")
    if pipe.schedule == "joint":
        # The executor keeps each rank's LLM order, but expert all-to-alls and context-parallel
        # exchanges across pipeline groups are not yet proven under it.
        require(par.cp == 1, f"parallel.cp={par.cp}: pipeline.schedule=joint does not support context "
                "parallelism yet; use parallel.cp=1 or pipeline.schedule=megatron")
        require(par.ep == 1, f"parallel.ep={par.ep}: pipeline.schedule=joint does not support expert "
                "parallelism yet; use parallel.ep=1 or pipeline.schedule=megatron")


def _check_microbatches(cfg: OmniConfig, world_size: int) -> None:
    par, data = cfg.parallel, cfg.data
    dp = par.data_parallel_size(world_size)
    microbatches = data.global_batch_size // max(data.micro_batch_size * dp, 1)
    # Packed steps are checked with the batch sizes (megaomni.data.batch_rules.check_batch_sizes).
    require(par.vpp == 1 or data.packing or microbatches >= par.pp,
            f"data.global_batch_size={data.global_batch_size}: the interleaved pipeline schedule needs "
            f">= parallel.pp={par.pp} micro-batches per step, got global_batch_size/(micro_batch_size*dp)="
            f"{data.global_batch_size}/({data.micro_batch_size}*{dp})={microbatches}")


def _check_context(cfg: OmniConfig) -> None:
    par = cfg.parallel
    multiple = par.sequence_multiple()
    require(cfg.data.seq_length % multiple == 0,
            f"data.seq_length={cfg.data.seq_length}: must be a multiple of {multiple} "
            f"(2*parallel.cp when cp > 1, times parallel.tp with parallel.sp; cp={par.cp}, tp={par.tp}, "
            f"sp={par.sp})")


def _check_experts(cfg: OmniConfig, world_size: int) -> None:
    par, moe = cfg.parallel, cfg.model.llm.moe
    if not moe.enabled:
        require(par.ep == 1, f"parallel.ep={par.ep}: expert parallelism needs an MoE LLM "
                "(set model.llm.moe.num_experts)")
        return
    require(moe.num_experts % par.ep == 0, f"parallel.ep={par.ep}: must divide model.llm.moe.num_experts="
            f"{moe.num_experts} (valid: {divisors(moe.num_experts)})")
    require(1 <= moe.top_k <= moe.num_experts, f"model.llm.moe.top_k={moe.top_k}: must be in "
            f"[1, num_experts={moe.num_experts}]")
    require(1 <= moe.layer_freq <= cfg.model.llm.num_layers, f"model.llm.moe.layer_freq={moe.layer_freq}: "
            f"must be in [1, model.llm.num_layers={cfg.model.llm.num_layers}]")
    require(moe.balancing in ("aux_loss", "aux_loss_free", "none"),
            f"model.llm.moe.balancing={moe.balancing!r}: valid: aux_loss, aux_loss_free, none")
    require(moe.token_dispatcher in ("alltoall", "allgather"),
            f"model.llm.moe.token_dispatcher={moe.token_dispatcher!r}: valid: alltoall, allgather")
    require(moe.grouped_gemm in GROUPED_GEMMS,
            f"model.llm.moe.grouped_gemm={moe.grouped_gemm!r}: valid: {', '.join(GROUPED_GEMMS)}")
    require(par.tp == 1 or par.sp, f"parallel.sp=false: an MoE LLM with parallel.tp={par.tp} needs "
            "parallel.sp=true (megatron-core's MoE layer takes sequence-parallel input)")
    expert_ranks = par.ep * par.tp  # expert tensor parallelism follows parallel.tp
    per_stage = world_size // par.pp
    require(per_stage % expert_ranks == 0, f"parallel.ep={par.ep}: ep*tp={expert_ranks} must divide the "
            f"ranks of a pipeline stage, world/pp={per_stage}")
    for name in ("ffn_hidden_size", "shared_expert_ffn_hidden_size"):
        value = getattr(moe, name)
        require(value >= 0 and value % par.tp == 0, f"model.llm.moe.{name}={value}: must be >= 0 and "
                f"divisible by parallel.tp={par.tp}")


def check_parallel_layout(cfg: OmniConfig, world_size: int) -> None:
    par = cfg.parallel
    for name in ("tp", "pp", "vpp", "cp", "ep"):
        value = getattr(par, name)
        require(value >= 1, f"parallel.{name}={value}: must be a positive integer")
    require(par.encoder.tp >= 1, f"parallel.encoder.tp={par.encoder.tp}: must be a positive integer")
    _check_tensor(cfg)
    model_parallel = par.tp * par.pp * par.cp
    require(world_size % model_parallel == 0,
            f"parallel.tp*pp*cp={model_parallel}: must divide the world size {world_size} "
            f"(valid tp*pp*cp: {divisors(world_size)})")
    _check_pipeline(cfg)
    _check_context(cfg)
    _check_experts(cfg, world_size)
    _check_microbatches(cfg, world_size)
