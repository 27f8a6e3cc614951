"""One step's forward and backward under the configured pipeline schedule: megatron-core's own
schedules for the baseline, or a plan (``megaomni.pipeline``) run by megaomni's executor. Also
writes the step's timeline when asked (``pipeline.timeline_interval``) and, under ``joint``,
fits the planner's costs to the first steps' measured actions (``pipeline.profile_steps``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel import get_forward_backward_func

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.flops import FlopModel
from megaomni.parallel.stages import layers_per_stage
from megaomni.pipeline.costs import Rates, StepCosts, fit_rates, step_costs
from megaomni.pipeline.executor import PlanExecutor
from megaomni.pipeline.joint_plan import joint_plan
from megaomni.pipeline.llm_order import chunk_run_length
from megaomni.pipeline.megatron_plan import megatron_plan
from megaomni.pipeline.replay import action_samples
from megaomni.pipeline.shares import media_items

log = logging.getLogger("megaomni.train")


def describe(batches: list[Batch], items: list) -> list[dict]:
    """What the cost model needs of each micro-batch: its samples' lengths (a packed row's
    segments, or every padded row), its row length, its media items."""
    out = []
    for batch, its in zip(batches, items):
        b, s = batch.tokens.shape
        lengths = batch.cu_seqlens.diff().tolist() if batch.cu_seqlens is not None else [s] * b
        out.append({"seq_lens": lengths, "tokens": b * s, "items": its})
    return out


class StepRunner:
    def __init__(self, cfg: OmniConfig, state, device, vocab_size: int):
        self.cfg, self.state = cfg, state
        self.pp, self.vpp = cfg.parallel.pp, cfg.parallel.vpp
        self.schedule = cfg.pipeline.schedule
        self.flops = FlopModel.from_config(cfg.model, vocab_size, layers_per_stage(cfg, vocab_size))
        self.bytes = 2 if cfg.train.bf16 else 4
        self.rates = Rates()
        self._pending = None
        self._steps = 0  # steps this process ran (the profiling pass follows a resume too)
        self._samples: dict = {}  # the profiling pass's (FLOPs, seconds) per action kind
        if self.schedule == "joint" or cfg.pipeline.executor == "plan":
            self.executor = PlanExecutor(state.ddp, device, joint=self.schedule == "joint" and self.pp > 1)
        else:
            self.executor = None
            self.forward_backward = get_forward_backward_func()

    def current_action(self) -> str:
        """The plan action this rank is running ("" outside one, or under megatron-core's schedules)."""
        action = self.executor.action if self.executor is not None else None
        return "" if action is None else str(action)

    def plan(self, described: list[dict], costs: StepCosts):
        chunk_run = chunk_run_length(len(described), self.pp) if self.vpp > 1 else 0
        if self.schedule == "joint":
            pipe = self.cfg.pipeline
            return joint_plan(self.pp, self.vpp, costs, self.rates, chunk_run, pipe.joint_fallback, pipe.encoder_group)
        return megatron_plan(self.pp, self.vpp, [len(d["items"]) for d in described], chunk_run)

    def run(self, iteration: int, batches: list[Batch], forward_step) -> list:
        """Forward and backward of the step's micro-batches; megatron-core's loss reports."""
        interval = self.cfg.pipeline.timeline_interval
        record = bool(interval) and iteration % interval == 0
        self._steps += 1
        # The first step (allocations, first calls, NCCL communicators) is left out of the
        # profiling pass and of the sync check.
        profile = self.schedule == "joint" and 2 <= self._steps <= 1 + self.cfg.pipeline.profile_steps
        sync_debug = self.cfg.pipeline.sync_debug if self._steps > 1 else ""
        self.last_timeline = None  # the step's recorded actions, if any (megaomni.training.step_time)
        if self.executor is None and not record:  # megatron-core's schedules need no plan
            return self._megatron_core(batches, forward_step)
        items, described, costs, plan = self._planned(batches)
        if self.executor is None:
            reports, timeline = self._megatron_core(batches, forward_step), None
        else:
            reports, timeline = self.executor.run(plan, batches, items, forward_step, record=record or profile,
                                                  sync_debug=sync_debug)
        if profile:
            action_samples(plan, costs, timeline.events, self._samples)
            if self._steps == 1 + self.cfg.pipeline.profile_steps:
                self._fit()
        self._pending = (iteration, described, plan, timeline) if record else None
        self.last_timeline = timeline if record or profile else None
        return reports

    def forward_only(self, batches: list[Batch], forward_step) -> list:
        """The step's forward alone (evaluation, under ``torch.no_grad``): the schedule training
        runs, without its backward; no profiling or timeline, and training's step count kept."""
        if self.executor is None:
            return self._megatron_core(batches, forward_step, forward_only=True)
        items, _, _, plan = self._planned(batches)
        reports, _ = self.executor.run(plan, batches, items, forward_step, forward_only=True)
        return reports

    def _planned(self, batches: list[Batch]):
        """The step's media items, described micro-batches, costs and plan."""
        items = [media_items(b.media) for b in batches]
        described = describe(batches, items)
        costs = step_costs(self.flops, described, self.bytes)
        return items, described, costs, self.plan(described, costs)

    def _fit(self) -> None:
        """The planner's costs from the profiling pass. Every rank must plan alike, and the
        tensor-parallel ranks of a stage timed their own actions: global rank 0's fit for all."""
        box = [fit_rates(self._samples, self.rates)]
        dist.broadcast_object_list(box, src=0)
        self.rates = box[0]
        log.info("planner costs fitted on %d profiled steps: %s", self.cfg.pipeline.profile_steps, ", ".join(
            f"{kind} {1 / self.rates.per_flop[kind] / 1e12 if self.rates.per_flop[kind] > 0 else float('inf'):.0f} "
            f"TFLOP/s, floor {self.rates.floor[kind] * 1e3:.1f} ms" for kind in sorted(self._samples)))

    def write_timeline(self) -> None:
        """Write the last step's timeline, if it was recorded: outside the timed step."""
        if self._pending is not None:
            self._write(*self._pending)
            self._pending = None

    def _megatron_core(self, batches: list[Batch], forward_step, forward_only: bool = False) -> list:
        chunks = self.state.chunks
        # Every model chunk (virtual stage) walks the same micro-batches.
        iterators = [iter(batches) for _ in chunks]
        if len(chunks) > 1:
            chunks[0].config.microbatch_group_size_per_vp_stage = chunk_run_length(len(batches), self.pp)
        return self.forward_backward(
            forward_step_func=forward_step,
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.state.ddp,
            num_microbatches=len(batches),
            seq_length=max(b.tokens.shape[1] for b in batches),
            micro_batch_size=batches[0].tokens.shape[0],
            forward_only=forward_only,
        )

    def _write(self, iteration: int, described: list[dict], plan, timeline) -> None:
        """timelines/iter_N.json (and .png with events): written by global rank 0. It holds all
        the simulator needs to replay the step: FLOP model, micro-batches, plan (for the
        megatron-core executor, the plan of the same order), and what each rank ran when."""
        if dist.get_rank() != 0:
            return
        folder = os.path.join(self.cfg.train.output_dir, "timelines")
        os.makedirs(folder, exist_ok=True)
        record = {
            "iteration": iteration, "schedule": self.schedule,
            "executor": "megatron-core" if self.executor is None else "plan",
            "pp": self.pp, "vpp": self.vpp, "data_parallel_rank": ps.get_data_parallel_rank(),
            "flop_model": dataclasses.asdict(self.flops), "bytes_per_value": self.bytes,
            "micro_batches": [{**d, "items": [vars(i) for i in d["items"]]} for d in described],
            "plan": plan.to_dict(),
            "timeline": timeline.to_dict() if timeline is not None else None,
        }
        path = os.path.join(folder, f"iter_{iteration:07d}")
        with open(path + ".json", "w") as f:
            json.dump(record, f)
        if timeline is not None:
            timeline.draw(path + ".png", f"{self.schedule} schedule, iteration {iteration}")
