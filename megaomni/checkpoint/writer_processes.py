"""megatron-core's checkpoint writer processes, made to end with the trainer however it ends
(kill -9 included).

A save runs in processes of its own: writers forked by the trainer (one per file bucket; on an
asynchronous save, by the save's forked worker), and a multiprocessing Manager spawned at the
first save, holding the queue the writers report to (its start also starts multiprocessing's
resource tracker). None of them watches its parent: a kill -9 of the trainer left the Manager,
the tracker and any writer running, orphaned. Each now gets PR_SET_PDEATHSIG = SIGKILL, so the
kernel kills it when its parent dies; the resource tracker ends by itself once every process
holding its pipe (the trainer, the Manager, the writers) is gone. Linux only (elsewhere unchanged).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from multiprocessing import get_context
from multiprocessing.managers import SyncManager
from typing import Iterator, Optional

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_armed = False  # forks made now (and in the children they make) die with their parent
_forking_pid = 0  # the process forking: the child's parent
_manager: Optional[SyncManager] = None  # kept referenced: its finalizer would stop the server


def die_with_parent(parent: int) -> None:
    """This process gets SIGKILL when ``parent`` (its parent) dies; it exits now if it already has.
    The kernel ties the signal to the parent's thread that made the child: the trainer's main one."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        os._exit(1)


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    if _armed:
        die_with_parent(_forking_pid)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _results_queue() -> None:
    """megatron-core's writers report to a Manager's queue that it starts at its first save (a
    module global); this one's server dies with the trainer. (megatron-core imported here, not
    above: the spawned server imports this module, and needs none of it.)"""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    global _manager
    if filesystem_async._results_queue is None:
        _manager = SyncManager(ctx=get_context("spawn"))
        _manager.start(die_with_parent, (os.getpid(),))
        filesystem_async._results_queue = _manager.Queue()


@contextlib.contextmanager
def writers_die_with_trainer() -> Iterator[None]:
    """Around a save (or the start of an asynchronous one): every process it starts ends with
    its parent, and so with the trainer."""
    global _armed
    _results_queue()
    _armed = True
    try:
        yield
    finally:
        _armed = False
