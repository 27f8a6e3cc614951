"""One step ahead: a background thread makes the next item while the caller uses this one."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Optional, TypeVar

import torch

T = TypeVar("T")


class Prefetcher(Generic[T]):
    """``next()`` returns ``make()``'s next result, in call order, and starts making the one after.

    One thread and at most one item in flight, so ``make`` never runs twice at once and may
    advance its caller's state; whoever owns that state rewinds it after :meth:`discard`."""

    def __init__(self, make: Callable[[], T], cuda_device: Optional[int] = None):
        self._make = make
        # CUDA's current device is per thread: pinning on a fresh thread would otherwise open a
        # context on GPU 0 from every rank (PyTorch's pin-memory thread sets it the same way).
        initializer = (lambda: torch.cuda.set_device(cuda_device)) if cuda_device is not None else None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="megaomni-prefetch", initializer=initializer)
        self._pending: Optional[Future] = None

    def next(self) -> T:
        pending, self._pending = self._pending, None
        item = pending.result() if pending is not None else self._make()
        self._pending = self._thread.submit(self._make)
        return item

    def discard(self) -> None:
        """Wait for the item in flight, if any, and drop it (its error too)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()

    def close(self) -> None:
        self.discard()
        self._thread.shutdown(wait=True)
