"""No silent hangs (``train.step_timeout_s``): a daemon thread per rank watches the phase the
trainer names as it begins one (``watchdog.phase("forward_backward", iteration)``; a phase lasts
until the next begins). One that runs past the timeout (a stalled peer, a hung collective or save)
logs one ERROR line with the rank, iteration, phase, the plan executor's action and how long,
dumps every thread's Python stack to stderr and ends the process with :data:`EXIT_CODE`:
``os._exit``, since a thread blocked in a collective cannot be unwound. The thread needs the GIL,
which collectives, I/O and sleeps release; the process-group timeout (megaomni.platform.distributed)
covers a call that does not."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from typing import Callable, Optional

# Next after megaomni's own 2-4; not 124 (GNU timeout's, so a `timeout`-wrapped run's limit and a
# hung step stay apart) and below 128 (not read as a signal's).
EXIT_CODE = 5

log = logging.getLogger("megaomni.train")


class Watchdog:
    """While entered, ends the process when a phase lasts more than ``timeout_s`` (0: never).
    ``action``: what the plan executor is running now ("" when nothing), read when it fires."""

    def __init__(self, timeout_s: float, rank: int, action: Callable[[], str] = lambda: ""):
        self.timeout_s, self.rank, self._action = timeout_s, rank, action
        # (name, iteration, start): replaced whole, so the watching thread reads one consistent phase.
        self._phase: Optional[tuple[str, int, float]] = None
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> Watchdog:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="megaomni-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def phase(self, name: str, iteration: int) -> None:
        self._phase = (name, iteration, time.monotonic())

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.timeout_s / 10)):
            if self._phase is not None and time.monotonic() - self._phase[2] > self.timeout_s:
                self._expire(*self._phase)

    def _expire(self, name: str, iteration: int, started: float) -> None:
        action = self._action()
        log.error("rank %d: iteration %d: phase %s%s has run %.1f s, past train.step_timeout_s=%g; exiting with "
                  "code %d (Python stacks of all threads follow on stderr)", self.rank, iteration, name,
                  f" (action {action})" if action else "", time.monotonic() - started, self.timeout_s, EXIT_CODE)
        for stream in (sys.stdout, sys.stderr):  # os._exit flushes nothing
            stream.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(EXIT_CODE)
