"""Where the loader's work runs: in the training process, or in ``data.workers`` worker
processes started by a fork server (a clean single-threaded process: forking the trainer itself,
once it holds other threads' locks, hung a worker on the CI machine). The work is indexing
shards (megaomni/data/index.py) and decoding micro-batches: each data-parallel rank decodes its
own micro-batches only, read from their shards by byte range. Results come back in submission
order, so nothing a run sees depends on the number of workers.

A decoded micro-batch comes back as one :class:`Batch` whose tensors travel through shared
memory (PyTorch's multiprocessing reductions: a file descriptor per tensor, a dozen a batch),
not pickled bytes. A sample the index took but whose bytes do not decode (an image cut short
past its header) becomes a blank one-token sample that trains nothing, so the micro-batch keeps
its shape on every rank and on resume; the skip is reported with the batch.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterator, Optional

import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory reductions for tensors)

from megaomni.config import OmniConfig
from megaomni.data.batch import Batch
from megaomni.data.collate import collate, collate_packed
from megaomni.data.sample import Sample, build_sample
from megaomni.data.shards import read_sample
from megaomni.data.storage import RangeReader
from megaomni.data.tokenizer import Tokenizer
from megaomni.errors import BadSample

Ref = tuple[str, int, int, int]  # a sample: (shard path, byte offset, byte count, LLM tokens the index says)
Skip = tuple[str, str, str]  # (where, reason, detail)

_context: Optional[tuple[Tokenizer, OmniConfig, RangeReader]] = None  # this process's, set once


def _start(tokenizer: Tokenizer, cfg: OmniConfig, trainer: int) -> None:
    global _context
    # Ctrl-C reaches the whole process group, torchrun signals a rank's: the trainer stops at the
    # end of its step, saves and closes the workers itself (megaomni.training.preemption). A
    # worker ends with the trainer however that ends (the fork server, its parent, outlives it).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(trainer,), daemon=True).start()
    _context = (tokenizer, cfg, RangeReader())
    torch.set_num_threads(1)  # the workers share the cores; intra-op threads would oversubscribe them


def _exit_with(pid: int) -> None:
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)


def _call(fn: Callable, *args):
    return fn(*args, *_context)


def _blank(pad_id: int, mrope: bool) -> Sample:
    """One padding token, trained on nothing: the place of a sample that did not decode."""
    return Sample(key="", tokens=torch.tensor([pad_id]), labels=torch.tensor([pad_id]), loss_mask=torch.zeros(1),
                  positions=torch.zeros(3, 1, dtype=torch.long) if mrope else None)


def decode_micro_batch(refs: list[Ref], length: int, packed: bool, media: bool, tokenizer: Tokenizer,
                       cfg: OmniConfig, reader: RangeReader) -> tuple[Batch, list[Skip]]:
    """The micro-batch of ``refs``: one packed row of ``length`` tokens, or right-padded rows;
    ``media=False``: the media's sizes only (a rank without encoders decodes no pixels)."""
    samples, skipped = [], []
    for path, offset, nbytes, tokens in refs:
        raw = read_sample(path, offset, nbytes, reader)
        try:
            sample = build_sample(raw, tokenizer, cfg, media)
            if sample.tokens.numel() != tokens:
                raise BadSample("index_mismatch", f"{sample.tokens.numel()} tokens decoded, {tokens} indexed: "
                                "the index is not this data's (rebuild it: tools/index_data.py)")
            samples.append(sample)
        except BadSample as e:
            skipped.append((raw.where, e.reason, e.detail))
    # Blanks after the samples: a row's first num_samples segments stay its samples.
    samples += [_blank(tokenizer.pad_id, bool(cfg.model.llm.mrope_section))] * len(skipped)
    batch = collate_packed(samples, tokenizer.pad_id, length) if packed else \
        collate(samples, tokenizer.pad_id, length=length)
    batch.num_samples -= len(skipped)
    return batch, skipped


class _Deferred:
    """A Future-like result computed in the caller's thread when first asked for."""

    def __init__(self, fn: Callable, args: tuple):
        self._fn, self._args, self._done, self._value = fn, args, False, None

    def result(self):
        if not self._done:
            self._value, self._done = self._fn(*self._args), True
        return self._value

    def cancel(self) -> bool:
        return True


class Workers:
    """``submit(fn, *args)`` runs ``fn(*args, tokenizer, cfg, reader)`` in a worker (or, with no
    workers, when its result is asked for); ``map`` runs ``fn(item, tokenizer, cfg)`` over items."""

    def __init__(self, tokenizer: Tokenizer, cfg: OmniConfig):
        count = cfg.data.workers
        if count < 0:
            raise ValueError(f"data.workers={count}: must be >= 0 (0: decode in the training process)")
        self._local = (tokenizer, cfg, RangeReader())
        self._pool: Optional[ProcessPoolExecutor] = None
        if count:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])  # the server imports torch once, not each worker
            self._pool = ProcessPoolExecutor(count, mp_context=context, initializer=_start,
                                             initargs=(tokenizer, cfg, os.getpid()))
            self._pool.submit(int).result()  # start the workers now, not in the first step

    def submit(self, fn: Callable, *args) -> Future | _Deferred:
        if self._pool is None:
            return _Deferred(fn, (*args, *self._local))
        return self._pool.submit(_call, fn, *args)

    def map(self, fn: Callable, items: list) -> Iterator:
        """``fn(item, tokenizer, cfg)`` of each item, in order, as each is done."""
        if self._pool is None:
            return (fn(item, *self._local[:2]) for item in items)
        return self._pool.map(_call_two, [fn] * len(items), items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._local[2].close()


def _call_two(fn: Callable, item):
    """``fn(item, tokenizer, cfg)`` (the indexer takes no reader)."""
    return fn(item, *_context[:2])
