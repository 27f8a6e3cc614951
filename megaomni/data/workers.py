"""Shards -> samples, in the training process or in forked worker processes (``data.workers``).

Either way a shard's outcomes come back whole and in shard order, so the samples, their order
and the skip tally (first case of each reason) do not depend on the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterator, Union

import torch

from megaomni.config import OmniConfig
from megaomni.data.sample import Sample, build_sample
from megaomni.data.shards import iter_shard
from megaomni.data.step_plan import over_budget
from megaomni.data.tokenizer import Tokenizer
from megaomni.errors import BadSample

# A shard's samples in order: a Sample, or (where, reason, detail) for one skipped.
Outcome = Union[Sample, tuple[str, str, str]]
Decoder = Callable[[list[str]], Iterator[list[Outcome]]]


def decode_shard(path: str, tokenizer: Tokenizer, cfg: OmniConfig) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for raw in iter_shard(path):
        try:
            sample = build_sample(raw, tokenizer, cfg)
            if cfg.data.packing and (why := over_budget(sample, cfg.data)):
                raise BadSample("over_budget", why)
            outcomes.append(sample)
        except BadSample as e:
            # Not the exception itself: BadSample does not survive pickling (its args are the message).
            outcomes.append((raw.where, e.reason, e.detail))
    return outcomes


_worker: tuple[Tokenizer, OmniConfig] | None = None  # set in each worker process


def _start_worker(tokenizer: Tokenizer, cfg: OmniConfig) -> None:
    global _worker
    _worker = (tokenizer, cfg)
    torch.set_num_threads(1)  # the workers share the cores; intra-op threads would oversubscribe them


def _decode_in_worker(path: str) -> bytes:
    # Plain pickle copies tensors into the bytes; the pool's own pickler would pass each tensor
    # through a shared-memory file (a file descriptor per tensor: thousands for a shard).
    return pickle.dumps(decode_shard(path, *_worker), protocol=pickle.HIGHEST_PROTOCOL)


@contextlib.contextmanager
def shard_decoder(tokenizer: Tokenizer, cfg: OmniConfig) -> Iterator[Decoder]:
    """A function: shard paths -> each shard's outcomes, in order. With ``data.workers`` > 0 it
    holds a pool of forked processes until the ``with`` ends (fork: the tokenizer and config are
    inherited, not pickled, and no ``__main__`` guard is needed)."""
    workers = cfg.data.workers
    if workers < 0:
        raise ValueError(f"data.workers={workers}: must be >= 0 (0: decode in the training process)")
    if workers == 0:
        yield lambda paths: (decode_shard(path, tokenizer, cfg) for path in paths)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                             initargs=(tokenizer, cfg)) as pool:
        yield lambda paths: (pickle.loads(result) for result in pool.map(_decode_in_worker, paths))
