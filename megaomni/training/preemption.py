"""Stopping on a signal: SIGTERM (what SLURM and Kubernetes send before they kill a job; torchrun
passes it on to its ranks) and SIGINT (Ctrl-C). The handlers only note the signal; at the end of
each step the ranks agree on it (one all-reduce), save a checkpoint there and exit with 128 + the
signal: 143 for SIGTERM, 130 for SIGINT."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped at a step boundary for a signal; the process exits with ``exit_code``."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """While entered (the training loop), SIGTERM and SIGINT only note the signal; a second one,
    e.g. during the save, changes nothing. ``grace_s`` (``train.exit_grace_s``, 0: none): a save
    that would end later than that after the signal, by the last save's duration, is not begun."""

    def __init__(self, device: torch.device, grace_s: float):
        self.device, self.grace_s = device, grace_s
        self.signum, self._noted_at = 0, 0.0
        self.save_s = 0.0  # the last save's duration
        self.saved: tuple[int, str] = (0, "")  # the iteration and directory of this run's last save
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # where Python runs signal handlers
            self._previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, frame) -> None:
        if self.signum:
            os.write(2, b"megaomni: already stopping at the end of this step (and its save)\n")
            return
        self.signum, self._noted_at = signum, time.monotonic()

    def timed_save(self, save: Callable[[int], str], iteration: int) -> str:
        started = time.monotonic()
        path = save(iteration)
        self.save_s, self.saved = time.monotonic() - started, (iteration, path)
        return path

    def _agreed(self) -> tuple[int, float]:
        """Collective: the largest signal number any rank has had (0: none), and the most seconds
        any rank expects to be past its signal once a save has ended."""
        waited = time.monotonic() - self._noted_at if self.signum else 0.0
        flags = torch.tensor([self.signum, waited + self.save_s], dtype=torch.float64, device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, expected = flags.tolist()
        return int(signum), expected

    def stop_if_signalled(self, iteration: int, save: Callable[[int], str], root: str) -> None:
        """Collective, at the end of every step but the last: on a signal, save (unless this step
        saved already, or the grace time is short of it) and raise :class:`Preempted`."""
        signum, expected = self._agreed()
        if not signum:
            return
        stopped = f"stopped by {signal.Signals(signum).name} at iteration {iteration}"
        path: Optional[str] = self.saved[1] if self.saved[0] == iteration else None
        if path is None and self.grace_s and expected > self.grace_s:
            raise Preempted(signum, f"{stopped}; not saved: the save would end about {expected:.0f} s after the "
                            f"signal, past train.exit_grace_s={self.grace_s:g}; resume from the last checkpoint "
                            f"with checkpoint.load={root}")
        path = path or self.timed_save(save, iteration)
        raise Preempted(signum, f"{stopped}; saved {path}; resume with checkpoint.load={root}")
