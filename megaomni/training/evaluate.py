"""Evaluation during training: every ``eval.interval`` iterations (and at the last), the first
``eval.iters`` steps of each held-out set (``eval.path``), forward only, under the layout and
pipeline schedule training runs; per-token loss and answer NLL per set, reduced over ranks as
training's are (``step.reduce_step_stats``), in ``metrics.jsonl`` and the log.

Each evaluation starts its sets from their beginning (fixed ``data.seed``), so evaluations read
the same samples and compare; training's weights, gradients, RNG and data position are untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from typing import Iterable

import torch
from megatron.core import parallel_state as ps

from megaomni.checkpoint.dist_ckpt import _rng_state, _set_rng_state
from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.loader import OmniDataLoader
from megaomni.training.step import make_forward_step, reduce_step_stats

log = logging.getLogger("megaomni.train")


def eval_config(cfg: OmniConfig, directory: str) -> OmniConfig:
    """Training's config reading ``directory``: the same step shapes, tokenizer and seed. No
    prefetch: an evaluation reads its steps once, between training steps."""
    data = dataclasses.replace(cfg.data, path=directory, tokenizer=cfg.data.tokenizer_path(), prefetch=False)
    return dataclasses.replace(cfg, data=data)


@contextmanager
def evaluation_mode(modules: list[torch.nn.Module]):
    """Every module in eval mode, no autograd, and the RNG states (CPU, CUDA, megatron-core's
    tracker) as they were before, afterwards: training continues as without the evaluation."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    rng = _rng_state()
    for module in modules:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.train(training)
        _set_rng_state(rng)


def evaluate_steps(runner, forward_step, steps: Iterable[list[Batch]], pad_id: int, device) -> dict:
    """The loss over ``steps`` (each this rank's micro-batches) run forward only: sums over all
    the steps' answer tokens and samples, then divided (not a mean of per-step means)."""
    # Imported here: the trainer imports this module.

    reports, tokens, samples = [], 0, 0
    for batches in steps:
        reports += runner.forward_only(batches, forward_step)
        tokens += sum(int((b.tokens != pad_id).sum()) for b in batches)
        samples += sum(b.num_samples for b in batches)
    stats = reduce_step_stats(reports, tokens, samples, 0.0, device)
    return {key: stats[key] for key in ("loss", "answer_nll", "tokens", "loss_tokens")}


class Evaluator:
    """One loader per held-out set, built once; ``report`` evaluates them all."""

    def __init__(self, cfg: OmniConfig, tokenizer, runner, state, device, decode_media: bool):
        self.cfg, self.runner, self.state, self.device = cfg, runner, state, device
        self.pad_id = tokenizer.pad_id
        self.forward_step = make_forward_step(device)
        self.sets = [(name, OmniDataLoader(eval_config(cfg, directory), tokenizer, ps.get_data_parallel_rank(),
                                           ps.get_data_parallel_world_size(), decode_media))
                     for name, directory in cfg.eval.sets()]
        self.starts = [loader.state_dict() for _, loader in self.sets]  # where every evaluation begins

    def due(self, iteration: int) -> bool:
        interval = self.cfg.eval.interval
        return bool(interval) and (iteration % interval == 0 or iteration == self.cfg.train.iters)

    def report(self, iteration: int, writer) -> dict:
        """Evaluate every set; one ``metrics.jsonl`` line ``{"iteration", "eval": {set: {loss,
        answer_nll, tokens, loss_tokens}}, "eval_time_s"}`` and one log line per set."""
        started, results = time.perf_counter(), {}
        with evaluation_mode(self.state.ddp):
            for (name, loader), start in zip(self.sets, self.starts):
                loader.load_state_dict(start)
                steps = (loader.next_step() for _ in range(self.cfg.eval.iters))
                results[name] = evaluate_steps(self.runner, self.forward_step, steps, self.pad_id, self.device)
        record = {"iteration": iteration, "eval": results, "eval_time_s": time.perf_counter() - started}
        writer.append(record)
        if writer.enabled:
            for name, stats in results.items():
                log.info("eval iter %d | %s | loss %.4f | answer_nll %.4f | tokens %d", iteration, name,
                         stats["loss"], stats["answer_nll"], stats["tokens"])
        return record

    def close(self) -> None:
        for _, loader in self.sets:
            loader.close()
