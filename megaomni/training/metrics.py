"""Per-iteration metrics: one JSON object per line in ``metrics.jsonl`` and a progress line."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Optional

log = logging.getLogger("megaomni.train")


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


class MetricsWriter:
    """Written by one rank (the last pipeline stage's first DP/TP rank holds the loss)."""

    def __init__(self, output_dir: str, total_iters: int, log_interval: int, enabled: bool,
                 resume_from: int = 0):
        self.enabled = enabled
        self.total_iters = total_iters
        self.log_interval = max(1, log_interval)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._file = None
        self._started = time.perf_counter()
        self._first_iter = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            set_aside_past(self.path, resume_from)
            self._file = open(self.path, "a")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        it = record["iteration"]
        if self._first_iter is None:
            self._first_iter = it - 1
        self.append(record)
        if it % self.log_interval == 0 or it == self.total_iters:
            done = it - self._first_iter
            per_iter = (time.perf_counter() - self._started) / max(done, 1)
            extras = "".join(f" | {k} {v:.4g}" for k, v in record.items()
                             if k.startswith(("answer", "skipped", "micro_batches", "padding", "dp_imbalance",
                                              "max_memory", "tflops", "mfu"))
                             and isinstance(v, (int, float)))
            log.info(
                "iter %d/%d | loss %.4f | grad_norm %.3f | lr %.3e | tokens %d | %.0f tok/s | "
                "%.3f s/it%s | eta %s",
                it, self.total_iters, record["loss"], record["grad_norm"], record["lr"],
                record["tokens"], record["tokens_per_s"], record["step_time_s"], extras,
                format_eta(per_iter * (self.total_iters - it)),
            )

    def append(self, record: dict) -> None:
        """One line, no progress line (evaluations' records)."""
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()


def set_aside_past(path: str, iteration: int) -> Optional[str]:
    """A run continues its file from ``iteration`` (0: a new run, with train.overwrite): the lines
    past it (a run that went on after its last checkpoint, then crashed; or the run overwritten),
    and any cut short by a crash, move to ``metrics.replaced-<time>.jsonl`` beside it, so the file
    stays one curve and no line is lost. Returns that file, if any."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        raw = f.read()
    lines = [line + "\n" for line in raw.splitlines() if line.strip()]
    kept = [line for line in lines if _iteration(line) <= iteration]
    if "".join(kept) == raw:
        return None  # nothing past it: appended as it is
    aside = None
    if len(kept) < len(lines):
        aside = os.path.join(os.path.dirname(path), time.strftime("metrics.replaced-%Y%m%d-%H%M%S.jsonl"))
        with open(aside, "a") as f:
            f.writelines(line for line in lines if _iteration(line) > iteration)
        log.warning("metrics: %d lines past iteration %d moved to %s", len(lines) - len(kept), iteration, aside)
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    return aside


def _iteration(line: str) -> float:
    """A line's iteration; a line cut short (no iteration) counts as past every one."""
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def check_finite(iteration: int, loss: float, grad_norm: float) -> None:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"loss {loss}, grad norm {grad_norm} at iteration {iteration}: "
                                 "stopping (try a lower train.lr, or check the data)")
