"""The training loop: build, (resume,) iterate, log, checkpoint."""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.pipeline_parallel import get_forward_backward_func

from megaomni.checkpoint.dist_ckpt import load_checkpoint, save_checkpoint
from megaomni.config import OmniConfig
from megaomni.data.loader import OmniDataLoader
from megaomni.data.tokenizer import OmniTokenizer
from megaomni.models.build import build_model, padded_vocab_size
from megaomni.platform.distributed import init_distributed
from megaomni.training.metrics import MetricsWriter, check_finite
from megaomni.training.optimizer import build_optimizer
from megaomni.training.step import STAT_KEYS, make_forward_step

log = logging.getLogger("megaomni.train")


def _log_parameters(model) -> None:
    parts = {"llm": model.llm, **{n: getattr(model, f"{n}_encoder") for n in model.encoder_names}}
    counts = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, m in parts.items())
    log.info("parameters on this rank: %s", counts)


def reduce_step_stats(reports: list[dict], tokens: int, device) -> dict:
    """Sum the micro-batch statistics over data-parallel ranks, then share the last pipeline
    stage's totals with every stage (other stages contribute zeros)."""
    local = torch.zeros(len(STAT_KEYS) + 1, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for report in reports:
            local[: len(STAT_KEYS)] += report["stats"].to(local)
        local[-1] = tokens
    dist.all_reduce(local, group=ps.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(local, group=ps.get_pipeline_model_parallel_group())
    values = dict(zip(STAT_KEYS + ("tokens",), local.tolist()))
    return {
        "loss": values["loss_sum"] / max(values["loss_tokens"], 1.0),
        "answer_nll": values["answer_nll_sum"] / max(values["samples"], 1.0),
        "tokens": int(values["tokens"]),
        "loss_tokens": int(values["loss_tokens"]),
    }


def _is_metrics_rank() -> bool:
    return (ps.is_pipeline_last_stage(ignore_virtual=True)
            and ps.get_data_parallel_rank(with_context_parallel=True) == 0
            and ps.get_tensor_model_parallel_rank() == 0)


def train(cfg: OmniConfig) -> dict:
    """Run ``cfg.train.iters`` iterations; returns the last iteration's record."""
    device = init_distributed(cfg)
    tokenizer = OmniTokenizer(cfg.data.tokenizer_path())
    vocab = padded_vocab_size(tokenizer.vocab_size, cfg.model.llm.vocab_size)
    model = build_model(cfg, vocab, tokenizer.media_pad_id)
    # bf16: every parameter, megatron-core's and the plain torch ones (patch embedding, convs,
    # projectors), lives in bf16; the optimizer keeps fp32 master weights.
    model = model.to(device=device, dtype=torch.bfloat16 if cfg.train.bf16 else torch.float32)
    _log_parameters(model)
    ddp = DistributedDataParallel(
        model.config,
        DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False),
        model,
    )
    model.config.finalize_model_grads_func = finalize_model_grads
    model.config.no_sync_func = ddp.no_sync
    optimizer, scheduler = build_optimizer(cfg.train, [ddp])
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=ps.get_data_parallel_rank(),
                            dp_size=ps.get_data_parallel_world_size())

    start = 0
    if cfg.checkpoint.load:
        state = load_checkpoint(cfg.checkpoint.load, model, optimizer, scheduler)
        start = state["iteration"]
        loader.load_state_dict(state["data"])
    save_root = cfg.checkpoint.save or os.path.join(cfg.train.output_dir, "checkpoints")
    writer = MetricsWriter(cfg.train.output_dir, cfg.train.iters, cfg.logging.log_interval,
                           enabled=_is_metrics_rank(), resume_from=start)
    if dist.get_rank() == 0:
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        with open(os.path.join(cfg.train.output_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)

    forward_backward = get_forward_backward_func()
    forward_step = make_forward_step(device)
    record: dict = {}
    for iteration in range(start + 1, cfg.train.iters + 1):
        started = time.perf_counter()
        batches = loader.next_step()
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        reports = forward_backward(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=[ddp],
            num_microbatches=len(batches),
            seq_length=max(b.tokens.shape[1] for b in batches),
            micro_batch_size=cfg.data.micro_batch_size,
            forward_only=False,
        )
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        _, grad_norm, _ = optimizer.step()
        scheduler.step(increment=1)
        tokens = sum(int((b.tokens != tokenizer.pad_id).sum()) for b in batches)
        stats = reduce_step_stats(reports, tokens, device)
        step_time = time.perf_counter() - started
        record = {
            "iteration": iteration,
            "loss": stats["loss"],
            "grad_norm": float(grad_norm),
            "lr": lr,
            "tokens": stats["tokens"],
            "tokens_per_s": stats["tokens"] / step_time,
            "step_time_s": step_time,
            "answer_nll": stats["answer_nll"],
            "loss_tokens": stats["loss_tokens"],
            "skipped_samples": sum(loader.skipped.values()),
        }
        check_finite(iteration, record["loss"], record["grad_norm"])
        writer.write(record)
        interval = cfg.checkpoint.save_interval
        if iteration == cfg.train.iters or (interval and iteration % interval == 0):
            save_checkpoint(save_root, iteration, model, optimizer, scheduler,
                            common={"data": loader.state_dict(), "config": cfg.to_dict()})
    writer.close()
    return record
