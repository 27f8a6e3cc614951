"""Deterministic, resumable data-parallel loader over sample indexes: a continuous stream of
per-epoch permutations (several data sets interleaved by weight: megaomni/data/blend.py), cut
into steps planned from the index alone (tokens, media sizes: megaomni/data/index.py), each rank
decoding only its own micro-batches, just in time (megaomni/data/workers.py). Memory and
start-up stay flat in the corpus size beyond the index itself."""

from __future__ import annotations

import bisect
import collections
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.batch_rules import check_batch_sizes, equal_micro_batches, rows_padded_alone
from megaomni.data.blend import SampleStream
from megaomni.data.collate import PAD_MULTIPLE
from megaomni.data.index import DatasetIndex, open_index
from megaomni.data.prefetch import Prefetcher
from megaomni.data.sample import Sample, build_sample
from megaomni.data.shards import read_sample
from megaomni.data.sizes import SampleSizes
from megaomni.data.skip_tally import SkipTally
from megaomni.data.step_plan import StepPlan, budgeted, budgets, over_budget, plan_step
from megaomni.data.storage import RangeReader
from megaomni.data.tokenizer import Tokenizer
from megaomni.data.workers import Ref, Skip, Workers, decode_micro_batch
from megaomni.errors import BadSample
from megaomni.flops import FlopModel

log = logging.getLogger("megaomni.data")


@dataclass
class Step:
    batches: list[Batch]  # this rank's micro-batches
    plan: Optional[StepPlan]  # None without packing
    state: dict  # the stream's position after this step: where a checkpoint taken then resumes
    skipped: list[Skip] = field(default_factory=list)  # samples of this rank's micro-batches that did not decode


@dataclass
class _Planned:
    """A step planned from the index, its micro-batches being decoded."""

    plan: Optional[StepPlan]
    state: dict
    pending: list  # futures of (Batch, skips), one per micro-batch of this rank


class OmniDataLoader:
    """``next_step()`` returns this rank's micro-batches of the next global batch.

    The sample order depends only on ``data.seed`` and the data sets, never on ``dp_size``, so the
    ``state_dict`` (a position in that order) resumes under any data-parallel layout. It counts
    only the steps handed out: steps made ahead (``data.prefetch``, ``data.prefetch_steps``) are
    not in it.
    """

    def __init__(self, cfg: OmniConfig, tokenizer: Tokenizer, dp_rank: int, dp_size: int, decode_media: bool = True):
        data = cfg.data
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank}, dp_size={dp_size}: need 0 <= dp_rank < dp_size")
        check_batch_sizes(data, dp_size, cfg.parallel.min_micro_batches())
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.decode_media = decode_media  # False: this rank holds no encoder (its batches keep media sizes only)
        # Context / sequence parallelism split sequences evenly: lengths are multiples of that.
        self.pad_multiple = math.lcm(PAD_MULTIPLE, cfg.parallel.sequence_multiple())
        datasets = data.datasets()
        self.paths = [path for path, _ in datasets]
        self.weights = [weight for _, weight in datasets]
        self.workers = Workers(tokenizer, cfg)
        self.indexes = [_shared_index(path, tokenizer, cfg, self.workers) for path in self.paths]
        # Per data set, its usable index rows (within the micro-batch budgets) in stream order.
        self.rows: list[np.ndarray] = []
        self.index_skipped: dict[str, int] = {}  # reason -> count, over all data sets' indexes and budgets
        self.decode_skipped: dict[str, int] = {}  # reason -> count of this rank's samples that did not decode
        self.truncated = 0  # samples cut to seq_length (data.truncate)
        for path, index in zip(self.paths, self.indexes):
            self.rows.append(self._usable(path, index))
        self.starts = [0, *np.cumsum([len(r) for r in self.rows]).tolist()][:-1]
        self._warn_repeats()
        if len(self.paths) > 1:
            log.info("data: blending %s", ", ".join(f"{path} {weight / sum(self.weights):.1%}"
                                                      for path, weight in zip(self.paths, self.weights)))
        self.stream = SampleStream([len(r) for r in self.rows], self.weights, data.seed)
        self.samples = IndexedSamples(self)
        self.flops = FlopModel.from_config(cfg.model)  # what the balancer prices samples with
        self.min_micro_batches = cfg.parallel.min_micro_batches()
        self.last_plan: StepPlan | None = None
        self._consumed = self.stream.state_dict()  # after the steps handed out so far
        self._ahead: collections.deque[_Planned] = collections.deque()
        # Pinned batches copy to the GPU asynchronously (Batch.to uses non_blocking).
        self.pin = cfg.train.device != "cpu" and torch.cuda.is_available()
        self._prefetch: Optional[Prefetcher[Step]] = Prefetcher(
            self._make_step, torch.cuda.current_device() if self.pin else None) if data.prefetch else None

    def _usable(self, path: str, index: DatasetIndex) -> np.ndarray:
        """The index rows that fit a micro-batch; the others counted (``over_budget``) with the
        index's own skips, and the data set's load line logged."""
        started = time.perf_counter()
        tally = index.tally()
        keep = np.ones(len(index), dtype=bool)
        if self.cfg.data.packing:
            columns = {name: m for m, name in enumerate(index.modalities)}
            limits = budgets(self.cfg.data)
            sizes = [index.arrays["tokens"], *(index.arrays["rows"][:, columns[m.name]] for m in budgeted())]
            for size, limit in zip(sizes, limits):
                if limit:
                    keep &= np.asarray(size) <= limit
            if not keep.all():
                first = int(np.flatnonzero(~keep)[0])
                reader = RangeReader()
                where = read_sample(*index.location(first), reader).where  # named in the load line
                reader.close()
                tally.add(where, BadSample("over_budget", over_budget(index.sizes(first), self.cfg.data)))
                tally.counts["over_budget"] += int((~keep).sum()) - 1
        rows = np.flatnonzero(keep)
        truncated = index.truncated
        self.index_skipped = merged(self.index_skipped, tally.counts)
        self.truncated += truncated
        reasons = tally.summary()
        log.info("data: %d samples from %d shards in %s (%.1f s)%s; skipped %d%s", len(rows), len(index.shards), path,
                 time.perf_counter() - started + index.seconds, f"; truncated {truncated}" if self.cfg.data.truncate
                 else "", sum(tally.counts.values()),
                 f": {reasons}" if reasons else "")
        if not len(rows):
            raise ValueError(f"data.path={path}: no usable samples (skipped: {reasons or 'none'})")
        return rows

    def _warn_repeats(self) -> None:
        """Once (rank 0), per data set smaller than its share of a step: every step repeats its samples."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        data, total = self.cfg.data, sum(self.weights)
        for path, index, rows, weight in zip(self.paths, self.indexes, self.rows, self.weights):
            per_step = data.global_batch_tokens / float(np.mean(index.arrays["tokens"][rows])) \
                if data.packing and data.global_batch_tokens else data.global_batch_size
            taken = per_step * weight / total
            if taken > len(rows):
                setting = f"data.global_batch_tokens={data.global_batch_tokens}" if data.packing and \
                    data.global_batch_tokens else f"data.global_batch_size={data.global_batch_size}"
                share = f", weight {weight / total:.0%}" if len(self.paths) > 1 else ""
                log.warning("data: %s holds %d usable samples, fewer than the %.0f a step takes (%s%s): each is "
                            "repeated about %.1f times a step", path, len(rows), taken, setting, share,
                            taken / len(rows))

    def _locate(self, sample: int) -> tuple[DatasetIndex, int]:
        """The index and row of stream sample ``sample``."""
        d = bisect.bisect_right(self.starts, sample) - 1
        return self.indexes[d], int(self.rows[d][sample - self.starts[d]])

    def sizes(self, sample: int) -> SampleSizes:
        index, row = self._locate(sample)
        return index.sizes(row)

    def ref(self, sample: int) -> Ref:
        index, row = self._locate(sample)
        return (*index.location(row), int(index.arrays["tokens"][row]))

    def _take_tokens(self, budget: int) -> list[int]:
        """The next samples of the stream whose tokens fit ``budget``: the same under any layout
        (validation makes the budget hold a sample for every rank's micro-batches)."""
        count = tokens = 0
        for sample in self.stream.peek():
            size = self.sizes(sample).tokens
            if tokens + size > budget:
                break
            count, tokens = count + 1, tokens + size
        return self.stream.take(count)

    def _plan_next(self) -> _Planned:
        """The next step of the stream, planned from the index; this rank's micro-batches handed
        to the workers."""
        data = self.cfg.data
        if data.packing:
            step = self._take_tokens(data.global_batch_tokens) if data.global_batch_tokens else \
                self.stream.take(data.global_batch_size)
            plan = plan_step([self.sizes(i) for i in step], data, self.flops, self.dp_size, self.min_micro_batches,
                             self.pad_multiple, equal=equal_micro_batches(self.cfg.model.llm.moe, self.cfg.parallel,
                                                                          self.dp_size),
                             per_row=rows_padded_alone(self.cfg))
            jobs = [([self.ref(step[i]) for i in plan.packs[p]], plan.row_lengths[p]) for p in plan.ranks[self.dp_rank]]
        else:
            plan, step = None, self.stream.take(data.global_batch_size)
            jobs = self._padded_jobs(step)
        pending = [self.workers.submit(decode_micro_batch, refs, length, data.packing, self.decode_media)
                   for refs, length in jobs]
        return _Planned(plan, self.stream.state_dict(), pending)

    def _padded_jobs(self, step: list[int]) -> list[tuple[list[Ref], int]]:
        """This rank's micro-batches, all padded to one length: the global batch's longest sample
        (rounded up), so pipeline stages exchange one activation shape and every layout pads
        alike (an MoE router sees the same pad tokens under any layout)."""
        data = self.cfg.data
        longest = max(self.sizes(i).tokens for i in step)
        length = max(longest, min(-(-longest // self.pad_multiple) * self.pad_multiple, data.seq_length))
        per_rank = data.global_batch_size // self.dp_size
        mine = step[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        return [([self.ref(i) for i in mine[start:start + data.micro_batch_size]], length)
                for start in range(0, per_rank, data.micro_batch_size)]

    def next_step(self) -> list[Batch]:
        """This rank's micro-batches of the next step (packed, or padded without data.packing)."""
        step = self._prefetch.next() if self._prefetch is not None else self._make_step()
        self.last_plan, self._consumed = step.plan, step.state
        for where, reason, detail in step.skipped:
            log.warning("data: skipping %s at decode time: %s: %s", where, reason, detail)
        self.decode_skipped = merged(self.decode_skipped, collections.Counter(r for _, r, _ in step.skipped))
        return step.batches

    @property
    def skipped(self) -> dict[str, int]:
        """Samples skipped so far by reason: the indexes' and this rank's decode-time ones."""
        return merged(self.index_skipped, self.decode_skipped)

    def _make_step(self) -> Step:
        """The oldest planned step, decoded; more planned so that ``data.prefetch_steps`` are in
        the workers (in the prefetch thread when prefetching)."""
        ahead = self.cfg.data.prefetch_steps if self.cfg.data.workers else 1
        while len(self._ahead) < ahead:
            self._ahead.append(self._plan_next())
        planned = self._ahead.popleft()
        batches, skipped = [], []
        for pending in planned.pending:
            batch, skips = pending.result()
            batches.append(batch.pin_memory() if self.pin else batch)
            skipped += skips
        return Step(batches, planned.plan, planned.state, skipped)

    def state_dict(self) -> dict:
        """The position after the steps handed out (see :meth:`SampleStream.state_dict`)."""
        return copy.deepcopy(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        self._rewind()
        self.stream.load_state_dict(state, self.paths)
        self._consumed = self.stream.state_dict()

    def _rewind(self) -> None:
        """Drop the steps made ahead, if any: the stream goes back to the steps handed out."""
        if self._prefetch is not None:
            self._prefetch.discard()
        for planned in self._ahead:
            for pending in planned.pending:
                pending.cancel()
        self._ahead.clear()
        self.stream.load_state_dict(self._consumed, self.paths)

    def close(self) -> None:
        """Stop the prefetch thread and the workers; a later ``next_step`` decodes in the caller."""
        self._rewind()
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
        self.workers.close()


def _shared_index(path: str, tokenizer: Tokenizer, cfg: OmniConfig, workers: Workers) -> DatasetIndex:
    """The data set's index; under torch.distributed, rank 0 builds a missing one while the other
    ranks wait, then read it (each builds its own where rank 0 could not write it)."""
    import torch.distributed as dist

    shared = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if shared and dist.get_rank() != 0:
        dist.barrier()
        return open_index(path, tokenizer, cfg, workers.map)
    index = open_index(path, tokenizer, cfg, workers.map)
    if shared:
        dist.barrier()
    return index


def merged(*counts: dict[str, int]) -> dict[str, int]:
    """Counts by reason summed, in reason order."""
    total: collections.Counter = collections.Counter()
    for each in counts:
        total.update(each)
    return dict(sorted(total.items()))


class IndexedSamples:
    """The loader's samples in stream-index order (data set after data set), decoded when read:
    ``samples[i]`` (raises BadSample where its bytes do not decode), slices, and iteration over
    those that decode. For tools and tests; training reads micro-batches."""

    def __init__(self, loader: OmniDataLoader):
        self._loader = loader
        self._reader = RangeReader()

    def __len__(self) -> int:
        return sum(len(r) for r in self._loader.rows)

    def _decode(self, i: int) -> Sample:
        path, offset, nbytes, _ = self._loader.ref(i)
        return build_sample(read_sample(path, offset, nbytes, self._reader), self._loader.tokenizer, self._loader.cfg)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._decode(j) for j in range(len(self))[i]]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._decode(i % len(self))

    def __iter__(self):
        for i in range(len(self)):
            try:
                yield self._decode(i)
            except BadSample:
                continue

    def skipped(self) -> SkipTally:
        """The samples that do not decode, by reason (reading every one)."""
        tally = SkipTally()
        for i in range(len(self)):
            try:
                self._decode(i)
            except BadSample as error:
                path, offset, nbytes, _ = self._loader.ref(i)
                tally.add(read_sample(path, offset, nbytes, self._reader).where, error)
        return tally
