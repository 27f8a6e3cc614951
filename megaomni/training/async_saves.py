"""``checkpoint.async_save``: checkpoints written while training goes on, with megatron-core's
``dist_checkpointing`` async strategy (``AsyncCallsQueue``, as Megatron-LM's training loop uses it).

At a save the trainer writes the common and RNG state, stages the tensors (copied off the GPU)
and forks a worker that writes them; it goes on training. At each step's end :meth:`poll`
(collective) finds whether every rank's worker has finished; then the checkpoint is finalized on
all ranks: metadata, ``iter_N.tmp`` renamed, ``latest`` moved, ``checkpoint.keep_last`` applied,
so a checkpoint is never named before every rank has written it. A failure (a full disk) raises
there, with the partial directory removed. One save at a time: the next waits for the previous.

The worker is megatron-core's non-persistent one, forked per save: it sees the tensors as they
were at the fork (CPU tensors need no copy), and dies with the trainer
(megaomni.checkpoint.writer_processes). A run's end, a preemption's save and a stop for an
unhealthy run wait for the pending save; other exceptions (perhaps on one rank only, so no
collective may run) drop it: its ``iter_N.tmp`` never becomes ``latest``.
"""

from __future__ import annotations

from typing import Optional

from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest

from megaomni.checkpoint.writer_processes import writers_die_with_trainer
from megaomni.training.health import UnhealthyRun
from megaomni.training.preemption import Preempted

# Exceptions every rank raises at the same step (agreed or computed from reduced values): the
# pending save can still be finalized, collectively.
_EVERY_RANK = (Preempted, UnhealthyRun, FloatingPointError)


class AsyncSaves:
    """The training loop's saves in the background (``enabled``), but the one at ``last_iteration``:
    nothing is left to overlap it with."""

    def __init__(self, enabled: bool, last_iteration: int):
        self.enabled, self.last_iteration = enabled, last_iteration
        self._queue: Optional[AsyncCallsQueue] = AsyncCallsQueue(persistent=False) if enabled else None

    def __enter__(self) -> AsyncSaves:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._queue is None:
            return
        if exc_type is None or issubclass(exc_type, _EVERY_RANK):
            self.wait()
        else:  # this rank's worker killed (its writers die with it), nothing finalized
            for pending in self._queue.async_calls:
                pending.async_caller.close(abort=True)

    def background(self, iteration: int) -> Optional[AsyncSaves]:
        """Collective: what ``save_checkpoint(background=...)`` takes for a save at ``iteration``, once
        the pending save is finalized (checkpoints are published in order, one written at a time)."""
        self.wait()
        return self if self.enabled and iteration < self.last_iteration else None

    def schedule(self, request: AsyncRequest) -> None:
        """Collective: starts this rank's worker on ``request``, finalized by :meth:`poll` / :meth:`wait`."""
        with writers_die_with_trainer():
            self._queue.schedule_async_request(request)

    def poll(self) -> None:
        """Collective, at every step's end: finalizes the pending save if every rank's worker is done."""
        if self._queue is not None:
            self._queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Collective: until the pending save (if any) is written and finalized."""
        if self._queue is not None and self._queue.get_num_unfinalized_calls():
            self._queue.maybe_finalize_async_calls(blocking=True)
