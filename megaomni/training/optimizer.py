"""megatron-core optimizer (Adam, grad clipping) and warmup + cosine LR schedule."""

from __future__ import annotations

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megaomni.config import TrainConfig
from megaomni.platform.mcore_compat import fuse_adam


def build_optimizer(cfg: TrainConfig, model_chunks: list, distributed: bool = False):
    """``distributed``: shard the optimizer state over the data-parallel ranks (ZeRO-1)."""
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam",
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1,
            adam_beta2=cfg.adam_beta2,
            adam_eps=cfg.adam_eps,
            clip_grad=cfg.clip_grad,
            bf16=cfg.bf16,
            use_distributed_optimizer=distributed,
        ),
        model_chunks,
    )
    fuse_adam(optimizer)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=cfg.lr,
        min_lr=cfg.min_lr,
        lr_warmup_steps=cfg.warmup_iters,
        lr_decay_steps=max(cfg.iters, cfg.warmup_iters + 1),  # iters=0 only writes the initial weights
        lr_decay_style="cosine",
        start_wd=cfg.weight_decay,
        end_wd=cfg.weight_decay,
        wd_incr_steps=max(cfg.iters, cfg.warmup_iters + 1),
        wd_incr_style="constant",
    )
    return optimizer, scheduler
