"""Everything a run needs before its first step: this rank's model chunks wrapped in
megatron-core's DDP, the optimizer and the LR schedule."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)

from megaomni.config import OmniConfig
from megaomni.layers.grouped_experts import pack_experts
from megaomni.models.freeze import freeze
from megaomni.models.omni import OmniModel
from megaomni.parallel.model_chunks import build_model_chunks, sync_encoder_replicas
from megaomni.training.ddp import OmniDDP
from megaomni.training.optimizer import build_optimizer

log = logging.getLogger("megaomni.train")


@dataclass
class TrainingState:
    chunks: list[OmniModel]  # one per virtual pipeline stage of this rank
    ddp: list[DistributedDataParallel]
    optimizer: object
    scheduler: object


def _log_parameters(chunks: list[OmniModel]) -> None:
    counts: dict[str, int] = {}
    for chunk in chunks:
        parts = {"llm": chunk.llm, **{n: getattr(chunk, f"{n}_encoder") for n in chunk.encoder_names}}
        for name, module in parts.items():
            counts[name] = counts.get(name, 0) + sum(p.numel() for p in module.parameters())
    trained = sum(p.numel() for chunk in chunks for p in chunk.parameters() if p.requires_grad)
    log.info("parameters on this rank: %s; %.2fM train, %.2fM frozen (model.freeze)",
             ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()), trained / 1e6,
             (sum(counts.values()) - trained) / 1e6)


def build_training_state(cfg: OmniConfig, vocab_size: int, media_pad_id, device: torch.device) -> TrainingState:
    start = time.perf_counter()
    chunks = build_model_chunks(cfg, vocab_size, media_pad_id)
    log.info("model built in %.1f s", time.perf_counter() - start)
    for chunk in chunks:  # before DDP and the optimizer: both leave out what does not require grad
        freeze(chunk, cfg.model.freeze)
    # bf16: every parameter, megatron-core's and the plain torch ones (patch embedding, convs,
    # projectors), lives in bf16; the optimizer keeps fp32 master weights.
    dtype = torch.bfloat16 if cfg.train.bf16 else torch.float32
    chunks = [chunk.to(device=device, dtype=dtype) for chunk in chunks]
    for chunk in chunks:
        pack_experts(chunk)
    sync_encoder_replicas(cfg, chunks)
    _log_parameters(chunks)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    # Only the first chunk's buckets are used by megatron-core's bucketing; later chunks reduce
    # their grads in one go (Megatron-LM's arrangement).
    ddp = [OmniDDP(chunk.config, ddp_config, chunk, disable_bucketing=i > 0)
           for i, chunk in enumerate(chunks)]
    config = chunks[0].config  # the schedules read the first chunk's config
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = [d.no_sync for d in ddp] if len(ddp) > 1 else ddp[0].no_sync
    optimizer, scheduler = build_optimizer(cfg.train, ddp, distributed=cfg.parallel.distributed_optimizer)
    return TrainingState(chunks, ddp, optimizer, scheduler)
