"""The training loop: build, (resume,) iterate, log, checkpoint."""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megaomni.checkpoint.changes import keeps_data_position, resumed_config
from megaomni.checkpoint.check import load_common
from megaomni.checkpoint.dist_ckpt import load_checkpoint, origin, resolve_checkpoint, save_checkpoint
from megaomni.config import OmniConfig
from megaomni.data.loader import OmniDataLoader, merged
from megaomni.data.tokenizer import load_tokenizer
from megaomni.flops import FlopModel
from megaomni.models.build import padded_vocab_size
from megaomni.platform.distributed import init_distributed
from megaomni.training.async_saves import AsyncSaves
from megaomni.training.dashboards import Dashboards
from megaomni.training.evaluate import Evaluator
from megaomni.training.health import HealthCheck
from megaomni.training.metrics import MetricsWriter, check_finite
from megaomni.training.preemption import StopSignals
from megaomni.training.profiler import StepProfiler
from megaomni.training.run_dir import check_run_dirs, checkpoint_root
from megaomni.training.schedule import StepRunner
from megaomni.training.setup import build_training_state
from megaomni.training.step import make_forward_step, reduce_step_stats
from megaomni.training.step_time import StepClock, action_time, over_ranks
from megaomni.training.throughput import batch_flops, peak_tflops
from megaomni.training.watchdog import Watchdog

log = logging.getLogger("megaomni.train")


def _over_data_parallel(counts: dict) -> list[dict]:
    """Every data-parallel rank's ``counts`` (each decodes its own micro-batches; the other ranks
    of its model replica decode the same ones)."""
    gathered: list = [None] * ps.get_data_parallel_world_size()
    dist.all_gather_object(gathered, counts, group=ps.get_data_parallel_group())
    return gathered


def throughput_metrics(flops: float, step_time: float, peak: float) -> dict:
    """Model TFLOP/s per GPU, and MFU where the peak is known (see megaomni.flops)."""
    tflops = flops / step_time / dist.get_world_size() / 1e12
    return {"tflops_per_gpu": tflops, **({"mfu": tflops / peak} if peak else {})}


def peak_memory_gib(device) -> float:
    """The most GPU memory any rank's tensors have held so far, in GiB (stages and policies
    place activations differently, so the rank that writes the metrics is not enough)."""
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return peak.item() / 2**30


def step_plan_metrics(plan) -> dict:
    """The packed step's shape: micro-batches, padding, and rank balance before/after."""
    if plan is None:
        return {}
    return {"micro_batches": len(plan.packs), "padding": plan.padding,
            "dp_imbalance_before": plan.imbalance_before, "dp_imbalance_after": plan.imbalance_after}


def _is_metrics_rank() -> bool:
    return (ps.is_pipeline_last_stage(ignore_virtual=True)
            and ps.get_data_parallel_rank(with_context_parallel=True) == 0
            and ps.get_tensor_model_parallel_rank() == 0)


def _save_config(cfg: OmniConfig) -> None:
    if dist.get_rank() == 0:
        os.makedirs(cfg.train.output_dir, exist_ok=True)
        with open(os.path.join(cfg.train.output_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def train(cfg: OmniConfig) -> dict:
    """Run ``cfg.train.iters`` iterations; returns the last iteration's record. With
    ``train.iters=0`` it only writes the initial weights as a checkpoint (iteration 0)."""
    device = init_distributed(cfg)
    check_run_dirs(cfg)
    if cfg.checkpoint.load:  # checked, whole (validation); the optimizer settings it resumes with
        resume_from = resolve_checkpoint(cfg.checkpoint.load, dist.get_world_size())
        cfg = resumed_config(cfg, load_common(resume_from))
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    vocab = padded_vocab_size(tokenizer.vocab_size, cfg.model.llm.vocab_size)
    state = build_training_state(cfg, vocab, tokenizer.media_pad_ids, device)
    # A rank whose chunks hold no encoder (a later stage of megatron-core's schedule) decodes no media.
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=ps.get_data_parallel_rank(),
                            dp_size=ps.get_data_parallel_world_size(),
                            decode_media=any(chunk.encoder_names for chunk in state.chunks))
    save_root = checkpoint_root(cfg)
    _save_config(cfg)

    start, carried = 0, {}
    if cfg.checkpoint.load:
        common = load_checkpoint(resume_from, state.chunks, state.optimizer, state.scheduler, cfg.checkpoint.finetune,
                                 cfg.checkpoint.strict, cfg.checkpoint.reset_schedule)
        start, carried = common["iteration"], origin(common)
        if "data" in common and keeps_data_position(cfg, common):
            loader.load_state_dict(common["data"])
    if cfg.train.iters == 0:
        save_checkpoint(save_root, 0, state.chunks, state.optimizer, state.scheduler,
                        common={"config": cfg.to_dict(), **carried}, weights_only=True)
        return {}
    writer = MetricsWriter(cfg.train.output_dir, cfg.train.iters, cfg.logging.log_interval,
                           enabled=_is_metrics_rank(), resume_from=start)
    dashboards = Dashboards(cfg.logging, cfg.to_dict(), cfg.train.output_dir, enabled=_is_metrics_rank())

    runner = StepRunner(cfg, state, device, vocab)
    flop_model, peak = FlopModel.from_config(cfg.model, vocab), peak_tflops(device, cfg.train.peak_tflops)
    forward_step = make_forward_step(device)
    optimizer = state.optimizer
    health = HealthCheck.from_config(cfg.train, vocab)
    evaluator = Evaluator(cfg, tokenizer, runner, state, device, loader.decode_media) if cfg.eval.interval else None

    def save(iteration: int) -> str:
        watchdog.phase("save", iteration)
        return save_checkpoint(save_root, iteration, state.chunks, optimizer, state.scheduler,
                               common={"data": loader.state_dict(), "config": cfg.to_dict(), **carried},
                               keep_last=cfg.checkpoint.keep_last, background=saves.background(iteration))

    record: dict = {}
    profiler = StepProfiler(cfg.logging.profile_start, cfg.logging.profile_steps, cfg.train.output_dir,
                            dist.get_rank(), device)
    watchdog = Watchdog(cfg.train.step_timeout_s, dist.get_rank(), runner.current_action)
    with StopSignals(device, cfg.train.exit_grace_s) as signals, watchdog, \
            AsyncSaves(cfg.checkpoint.async_save, cfg.train.iters) as saves:
        for iteration in range(start + 1, cfg.train.iters + 1):
            watchdog.phase("data", iteration)
            profiler.before(iteration)
            clock = StepClock(device)
            batches = loader.next_step()
            clock.mark("data_wait")
            for ddp in state.ddp:
                ddp.zero_grad_buffer()
            optimizer.zero_grad()
            watchdog.phase("forward_backward", iteration)
            reports = runner.run(iteration, batches, forward_step)
            clock.mark("forward_backward")
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            watchdog.phase("optimizer", iteration)
            _, grad_norm, _ = optimizer.step()
            state.scheduler.step(increment=1)
            clock.mark("optimizer")
            watchdog.phase("metrics", iteration)  # the step's statistics over the ranks (collectives)
            ranks = over_ranks({"step_time_s": clock.total, "data_wait_s": clock.parts["data_wait_s"]}, device)
            tokens = sum(int((b.tokens != tokenizer.pad_id).sum()) for b in batches)
            flops = sum(batch_flops(flop_model, b, tokenizer.pad_id) for b in batches)
            stats = reduce_step_stats(reports, tokens, sum(b.num_samples for b in batches), flops, device)
            skipped = merged(loader.index_skipped, *_over_data_parallel(loader.decode_skipped))
            step_time = time.perf_counter() - clock.started
            profiler.after(iteration)
            runner.write_timeline()
            record = {
                "iteration": iteration,
                "loss": stats["loss"],
                "grad_norm": float(grad_norm),
                "lr": lr,
                "tokens": stats["tokens"],
                "tokens_per_s": stats["tokens"] / step_time,
                "step_time_s": step_time,
                **clock.parts, **action_time(runner.last_timeline), **ranks,
                **throughput_metrics(stats["flops"], step_time, peak),
                "answer_nll": stats["answer_nll"],
                "loss_tokens": stats["loss_tokens"],
                "skipped_samples": sum(skipped.values()),
                "skipped": skipped,  # reason -> count (megaomni/errors.py lists the reasons)
                **({"truncated_samples": loader.truncated} if cfg.data.truncate else {}),
                **step_plan_metrics(loader.last_plan),
                **({"max_memory_gib": peak_memory_gib(device)} if device.type == "cuda" else {}),
            }
            check_finite(iteration, record["loss"], record["grad_norm"])
            saves.poll()
            try:  # written after the save, which it says blocked training save_blocked_s; also when a check stops
                health.check(iteration, record["loss"], record["grad_norm"])
                if evaluator and evaluator.due(iteration):
                    watchdog.phase("eval", iteration)
                    dashboards.write(evaluator.report(iteration, writer))
                interval, last = cfg.checkpoint.save_interval, iteration == cfg.train.iters
                if (last and cfg.checkpoint.save_last) or (interval and iteration % interval == 0):
                    signals.timed_save(save, iteration)
                    record["save_blocked_s"] = signals.save_s
            finally:
                writer.write(record)
                dashboards.write(record)
            if iteration < cfg.train.iters:  # a signal during the last step: the run ends as it would have
                signals.stop_if_signalled(iteration, save, save_root)
    loader.close()
    if evaluator:
        evaluator.close()
    writer.close()
    dashboards.close()
    return record
