"""Deterministic, resumable data-parallel loader: a continuous stream of per-epoch permutations
(several data sets interleaved by weight: megaomni/data/blend.py), cut into global batches, each
rank taking its share as micro-batches. The next step is made in the background while one trains."""

from __future__ import annotations

import collections
import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.blend import SampleStream
from megaomni.data.collate import PAD_MULTIPLE, collate, collate_packed, padded_length
from megaomni.data.prefetch import Prefetcher
from megaomni.data.sample import Sample
from megaomni.data.shards import list_shards
from megaomni.data.skip_tally import SkipTally
from megaomni.data.step_plan import StepPlan, plan_step
from megaomni.data.tokenizer import Tokenizer
from megaomni.data.workers import Decoder, shard_decoder
from megaomni.errors import BadSample
from megaomni.flops import FlopModel
from megaomni.validation import check_batch_sizes, equal_micro_batches

log = logging.getLogger("megaomni.data")


@dataclass
class Step:
    batches: list[Batch]  # this rank's micro-batches
    plan: Optional[StepPlan]  # None without packing
    state: dict  # the stream's position after this step: where a checkpoint taken then resumes


class OmniDataLoader:
    """``next_step()`` returns this rank's micro-batches of the next global batch.

    The sample order depends only on ``data.seed`` and the data sets, never on ``dp_size``, so the
    ``state_dict`` (a position in that order) resumes under any data-parallel layout. It counts
    only the steps handed out: a step made ahead (``data.prefetch``) is not in it.
    """

    def __init__(self, cfg: OmniConfig, tokenizer: Tokenizer, dp_rank: int, dp_size: int):
        data = cfg.data
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank}, dp_size={dp_size}: need 0 <= dp_rank < dp_size")
        check_batch_sizes(data, dp_size, cfg.parallel.min_micro_batches())
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.dp_rank, self.dp_size = dp_rank, dp_size
        # Context / sequence parallelism split sequences evenly: lengths are multiples of that.
        self.pad_multiple = math.lcm(PAD_MULTIPLE, cfg.parallel.sequence_multiple())
        datasets = data.datasets()
        self.paths = [path for path, _ in datasets]
        self.weights = [weight for _, weight in datasets]
        self.skipped: dict[str, int] = {}  # reason -> count, over all data sets
        self.truncated = 0  # samples cut to seq_length (data.truncate)
        self.samples, sizes = self._load()  # the data sets' samples, one after the other
        self.stream = SampleStream(sizes, self.weights, data.seed)
        self.flops = FlopModel.from_config(cfg.model)  # what the balancer prices samples with
        self.min_micro_batches = cfg.parallel.min_micro_batches()
        self.last_plan: StepPlan | None = None
        self._consumed = self.stream.state_dict()  # after the steps handed out so far
        # Pinned batches copy to the GPU asynchronously (Batch.to uses non_blocking).
        self.pin = cfg.train.device != "cpu" and torch.cuda.is_available()
        self._prefetch: Optional[Prefetcher[Step]] = Prefetcher(
            self._make_step, torch.cuda.current_device() if self.pin else None) if data.prefetch else None

    def _load(self) -> tuple[list[Sample], list[int]]:
        """Convert every sample once, up front: bad ones are known (and counted) before training,
        and the permutations run over usable samples only. Returns the samples and each data
        set's count."""
        samples: list[Sample] = []
        sizes: list[int] = []
        skipped: collections.Counter = collections.Counter()
        with shard_decoder(self.tokenizer, self.cfg) as decode:
            for path in self.paths:
                loaded, tally = self._load_dataset(path, decode)
                samples += loaded
                sizes.append(len(loaded))
                skipped += tally.counts
        self.skipped = dict(sorted(skipped.items()))
        self.truncated = sum(1 for s in samples if s.truncated_from)
        if len(self.paths) > 1:
            log.info("data: blending %s", ", ".join(f"{path} {weight / sum(self.weights):.1%}"
                                                      for path, weight in zip(self.paths, self.weights)))
        return samples, sizes

    def _load_dataset(self, path: str, decode: Decoder) -> tuple[list[Sample], SkipTally]:
        started = time.perf_counter()
        shards = list_shards(path)
        samples, skipped = [], SkipTally()
        for outcomes in decode(shards):
            for outcome in outcomes:
                if isinstance(outcome, Sample):
                    samples.append(outcome)
                    continue
                where, reason, detail = outcome
                skipped.add(where, error := BadSample(reason, detail))
                log.debug("skipping %s: %s", where, error)
        truncated = sum(1 for s in samples if s.truncated_from)
        reasons = skipped.summary()
        log.info("data: %d samples from %d shards in %s (%.1f s)%s; skipped %d%s", len(samples), len(shards), path,
                 time.perf_counter() - started, f"; truncated {truncated}" if self.cfg.data.truncate else "",
                 sum(skipped.counts.values()), f": {reasons}" if reasons else "")
        if not samples:
            raise ValueError(f"data.path={path}: no usable samples (skipped: {reasons or 'none'})")
        return samples, skipped

    def _take_tokens(self, budget: int) -> list[int]:
        """The next samples of the stream whose tokens fit ``budget`` (at least enough for every
        rank's micro-batches)."""
        needed = self.dp_size * self.min_micro_batches
        count = tokens = 0
        for index in self.stream.peek():
            size = self.samples[index].tokens.numel()
            if count >= needed and tokens + size > budget:
                break
            count, tokens = count + 1, tokens + size
        return self.stream.take(count)

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches of the next step: packed (:meth:`_next_packed`) or padded
        (:meth:`_next_padded`)."""
        step = self._prefetch.next() if self._prefetch is not None else self._make_step()
        self.last_plan, self._consumed = step.plan, step.state
        return step.batches

    def _make_step(self) -> Step:
        """Takes the step's samples from the stream (in the prefetch thread when prefetching)."""
        batches, plan = self._next_packed() if self.cfg.data.packing else (self._next_padded(), None)
        if self.pin:
            batches = [batch.pin_memory() for batch in batches]
        return Step(batches, plan, self.stream.state_dict())

    def _next_packed(self) -> tuple[list[Batch], StepPlan]:
        data = self.cfg.data
        step = self._take_tokens(data.global_batch_tokens) if data.global_batch_tokens else \
            self.stream.take(data.global_batch_size)
        samples = [self.samples[i] for i in step]
        plan = plan_step(samples, data, self.flops, self.dp_size, self.min_micro_batches, self.pad_multiple,
                         equal=equal_micro_batches(self.cfg.model.llm.moe, self.cfg.parallel, self.dp_size))
        return [collate_packed([samples[i] for i in plan.packs[p]], self.tokenizer.pad_id, plan.length)
                for p in plan.ranks[self.dp_rank]], plan

    def _next_padded(self) -> list[Batch]:
        """This rank's micro-batches, all padded to one length: the global batch's longest sample
        (rounded up), so pipeline stages exchange one activation shape and every layout pads
        alike (an MoE router sees the same pad tokens under any layout)."""
        data = self.cfg.data
        step = self.stream.take(data.global_batch_size)
        length = padded_length([self.samples[i] for i in step], data.seq_length, self.pad_multiple)
        per_rank = data.global_batch_size // self.dp_size
        mine = step[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        return [collate([self.samples[i] for i in mine[start:start + data.micro_batch_size]],
                        self.tokenizer.pad_id, length=length)
                for start in range(0, per_rank, data.micro_batch_size)]

    def state_dict(self) -> dict:
        """The position after the steps handed out (see :meth:`SampleStream.state_dict`)."""
        return copy.deepcopy(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self._rewind()
        self.stream.load_state_dict(state, self.paths)
        self._consumed = self.stream.state_dict()

    def _rewind(self) -> None:
        """Drop the step made ahead, if any: the stream goes back to the steps handed out."""
        if self._prefetch is not None:
            self._prefetch.discard()
        self.stream.load_state_dict(self._consumed, self.paths)

    def close(self) -> None:
        """Stop the prefetch thread; a later ``next_step`` makes its step in the caller's thread."""
        self._rewind()
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
