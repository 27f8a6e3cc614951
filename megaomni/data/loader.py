"""Deterministic, resumable data-parallel loader: a continuous stream of per-epoch permutations,
cut into global batches, each rank taking its contiguous share as micro-batches."""

from __future__ import annotations

import logging
import math
import time

import torch

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.balance import CostModel
from megaomni.data.collate import PAD_MULTIPLE, collate, collate_packed, padded_length
from megaomni.data.errors import BadSample, SkipTally
from megaomni.data.sample import Sample, build_sample
from megaomni.data.shards import index_shards, list_shards
from megaomni.data.step_plan import StepPlan, over_budget, plan_step
from megaomni.data.tokenizer import OmniTokenizer
from megaomni.parallel.rules import sequence_multiple
from megaomni.validation import check_batch_sizes, min_micro_batches

log = logging.getLogger("megaomni.data")

STATE_KEYS = ("epoch", "offset", "consumed_samples")


class OmniDataLoader:
    """``next_step()`` returns this rank's micro-batches of the next global batch.

    The sample order depends only on ``data.seed`` and the data set, never on ``dp_size``, so the
    ``state_dict`` (a position in that order) resumes under any data-parallel layout.
    """

    def __init__(self, cfg: OmniConfig, tokenizer: OmniTokenizer, dp_rank: int, dp_size: int):
        data = cfg.data
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank}, dp_size={dp_size}: need 0 <= dp_rank < dp_size")
        check_batch_sizes(data, dp_size, min_micro_batches(cfg))
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.dp_rank, self.dp_size = dp_rank, dp_size
        # Context / sequence parallelism split sequences evenly: lengths are multiples of that.
        self.pad_multiple = math.lcm(PAD_MULTIPLE, sequence_multiple(cfg))
        self.skipped: dict[str, int] = {}  # reason -> count
        self.truncated = 0  # samples cut to seq_length (data.truncate)
        self.samples: list[Sample] = self._load()
        self.costs = CostModel.from_config(cfg)
        self.min_micro_batches = min_micro_batches(cfg)
        self.last_plan: StepPlan | None = None
        self.epoch = 0
        self.offset = 0  # position of the next sample in this epoch's permutation
        self.consumed_samples = 0
        self._permutation_cache: tuple[int, list[int]] = (-1, [])

    def _load(self) -> list[Sample]:
        """Convert every sample once, up front: bad ones are known (and counted) before training,
        and the permutation runs over usable samples only."""
        started = time.perf_counter()
        path = self.cfg.data.path
        shards = list_shards(path)
        samples, skipped = [], SkipTally()
        for raw in index_shards(shards):
            try:
                sample = build_sample(raw, self.tokenizer, self.cfg)
                if self.cfg.data.packing and (why := over_budget(sample, self.cfg.data)):
                    raise BadSample("over_budget", why)
                samples.append(sample)
            except BadSample as e:
                skipped.add(raw.where, e)
                log.debug("skipping %s: %s", raw.where, e)
        self.skipped = dict(sorted(skipped.counts.items()))
        self.truncated = sum(1 for s in samples if s.truncated_from)
        reasons = skipped.summary()
        log.info("data: %d samples from %d shards in %s (%.1f s)%s; skipped %d%s", len(samples), len(shards), path,
                 time.perf_counter() - started, f"; truncated {self.truncated}" if self.cfg.data.truncate else "",
                 sum(self.skipped.values()), f": {reasons}" if reasons else "")
        if not samples:
            raise ValueError(f"data.path={path}: no usable samples (skipped: {reasons or 'none'})")
        return samples

    def _permutation(self, epoch: int) -> list[int]:
        if self._permutation_cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.cfg.data.seed + epoch)
            self._permutation_cache = (epoch, torch.randperm(len(self.samples), generator=generator).tolist())
        return self._permutation_cache[1]

    def _take(self, count: int) -> list[int]:
        """The next ``count`` sample indices of the stream; an epoch's tail runs into the next."""
        indices: list[int] = []
        while len(indices) < count:
            permutation = self._permutation(self.epoch)
            chunk = permutation[self.offset:self.offset + count - len(indices)]
            indices += chunk
            self.offset += len(chunk)
            if self.offset == len(permutation):
                self.epoch, self.offset = self.epoch + 1, 0
        self.consumed_samples += count
        return indices

    def _take_tokens(self, budget: int) -> list[int]:
        """The next samples of the stream whose tokens fit ``budget`` (at least enough for every
        rank's micro-batches)."""
        needed = self.dp_size * self.min_micro_batches
        count = tokens = 0
        epoch, offset = self.epoch, self.offset
        while True:
            size = self.samples[self._permutation(epoch)[offset]].tokens.numel()
            if count >= needed and tokens + size > budget:
                break
            count, tokens = count + 1, tokens + size
            offset += 1
            if offset == len(self.samples):
                epoch, offset = epoch + 1, 0
        return self._take(count)

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches of the next step (see :meth:`_next_padded` without packing)."""
        data = self.cfg.data
        if not data.packing:
            return self._next_padded()
        step = self._take_tokens(data.global_batch_tokens) if data.global_batch_tokens else \
            self._take(data.global_batch_size)
        samples = [self.samples[i] for i in step]
        plan = plan_step(samples, data, self.costs, self.dp_size, self.min_micro_batches, self.pad_multiple)
        self.last_plan = plan
        return [collate_packed([samples[i] for i in plan.packs[p]], self.tokenizer.pad_id, plan.length)
                for p in plan.ranks[self.dp_rank]]

    def _next_padded(self) -> list[Batch]:
        """This rank's micro-batches, all padded to one length: the global batch's longest sample
        (rounded up), so pipeline stages exchange one activation shape and every layout pads
        alike (an MoE router sees the same pad tokens under any layout)."""
        data = self.cfg.data
        step = self._take(data.global_batch_size)
        length = padded_length([self.samples[i] for i in step], data.seq_length, self.pad_multiple)
        per_rank = data.global_batch_size // self.dp_size
        mine = step[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        return [collate([self.samples[i] for i in mine[start:start + data.micro_batch_size]],
                        self.tokenizer.pad_id, length=length)
                for start in range(0, per_rank, data.micro_batch_size)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in STATE_KEYS if not isinstance(state.get(k), int) or state[k] < 0]
        if missing:
            raise ValueError(f"data loader state {state!r}: needs non-negative ints {', '.join(STATE_KEYS)}")
        if state["offset"] >= len(self.samples):
            raise ValueError(f"data loader state offset={state['offset']} is past the {len(self.samples)} usable "
                             f"samples of data.path={self.cfg.data.path}: was the data set changed?")
        self.epoch, self.offset, self.consumed_samples = state["epoch"], state["offset"], state["consumed_samples"]
