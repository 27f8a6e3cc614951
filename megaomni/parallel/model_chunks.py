"""This rank's part of the omni model under the parallel layout: one model chunk per virtual
pipeline stage, encoders on the first stage (or every pipeline rank), each part given its
process groups."""

from __future__ import annotations

from typing import Callable

import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedBase
from megatron.core.process_groups_config import ProcessGroupCollection

from megaomni.config import OmniConfig
from megaomni.models.build import build_model
from megaomni.models.omni import OmniModel
from megaomni.parallel.layout import encoder_parallel_fields, llm_parallel_fields
from megaomni.parallel.sequence import embedding_sharder


def _replication(cfg: OmniConfig) -> tuple[bool, bool]:
    """Whether the encoders are whole on every LLM TP rank (``parallel.encoder.tp=1`` under a
    tensor-parallel LLM), and whether every pipeline rank holds them (the joint schedule)."""
    return cfg.parallel.encoder.tp != cfg.parallel.tp, cfg.parallel.pp > 1 and cfg.pipeline.schedule == "joint"


def _encoder_process_groups(cfg: OmniConfig):
    """Encoders whole on every TP rank have this rank alone as their tensor- and
    context-parallel groups. Collective."""
    if not _replication(cfg)[0]:
        return None
    alone, _ = dist.new_subgroups(group_size=1)
    groups = ProcessGroupCollection.use_mpu_process_groups()
    groups.tp = groups.cp = groups.tp_cp = alone
    return groups


def _mark_replicas(encoder, llm_tp: bool, pipeline: bool) -> None:
    """An encoder whole on every LLM TP rank (``llm_tp``) or on every pipeline rank
    (``pipeline``, the joint schedule) holds duplicates: count its gradients once in the grad
    norm, and save it once (a replica id per copy)."""
    extra = ((ps.get_tensor_model_parallel_rank(),) if llm_tp else ()) + \
        ((ps.get_pipeline_model_parallel_rank(),) if pipeline else ())
    for param in encoder.parameters():
        if llm_tp:
            param.tensor_model_parallel = False
        if pipeline and ps.get_pipeline_model_parallel_rank() > 0:
            param.shared = True  # megatron-core's grad norm skips parameters marked shared
    inner = encoder.sharded_state_dict

    def sharded_state_dict(*args, **kwargs):
        state = inner(*args, **kwargs)
        for item in nested_values(state):
            if isinstance(item, ShardedBase):
                ids = item.replica_id if isinstance(item.replica_id, tuple) else (item.replica_id,)
                item.replica_id = (*extra, *ids)
        return state

    encoder.sharded_state_dict = sharded_state_dict


def sync_encoder_replicas(cfg: OmniConfig, chunks: list[OmniModel]) -> None:
    """Make every copy of a replicated encoder (whole on every LLM TP rank, or on every pipeline
    rank under the joint schedule) equal to the first. Each copy is drawn from a state seeded by
    the encoder's name (megaomni.models.initial_weights), so they start equal; this keeps that true
    whatever an encoder's modules draw from (copies apart would train apart, each rank encoding
    with different weights). Before the optimizer copies them into its master weights. Collective
    over the tensor- and pipeline-parallel groups."""
    over_tp, over_pipeline = _replication(cfg)
    sources = []
    if over_tp:
        sources.append((ps.get_tensor_model_parallel_group(), ps.get_tensor_model_parallel_src_rank()))
    if over_pipeline:
        sources.append((ps.get_pipeline_model_parallel_group(), ps.get_pipeline_model_parallel_first_rank()))
    for chunk in chunks:
        for name in chunk.encoder_names:
            encoder = getattr(chunk, f"{name}_encoder")
            for tensor in [*encoder.parameters(), *encoder.buffers()]:
                for group, source in sources:
                    dist.broadcast(tensor.data, src=source, group=group)


def build_model_chunks(cfg: OmniConfig, vocab_size: int, media_pad_id: Callable[[str], int]) -> list[OmniModel]:
    """One :class:`OmniModel` per virtual pipeline stage of this rank (one without VPP). The
    encoders are on the first stage, or under ``pipeline.schedule=joint`` on every rank's first
    chunk."""
    llm_fields = llm_parallel_fields(cfg, vocab_size)
    encoder_groups = _encoder_process_groups(cfg)
    shard = embedding_sharder(cfg.parallel.sp)
    vpp = cfg.parallel.vpp
    over_tp, joint = _replication(cfg)
    chunks = []
    for vp in range(vpp):
        vp_stage = vp if vpp > 1 else None
        model = build_model(
            cfg, vocab_size, media_pad_id, llm_parallel=llm_fields,
            encoder_parallel=encoder_parallel_fields(cfg.parallel), encoder_pg_collection=encoder_groups,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage, shard_sequence=shard, with_encoders=(vp == 0) if joint else None,
        )
        if over_tp or joint:
            for name in model.encoder_names:
                _mark_replicas(getattr(model, f"{name}_encoder"), over_tp, joint)
        chunks.append(model)
    return chunks
