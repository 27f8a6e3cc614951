"""Per-iteration metrics: one JSON object per line in ``metrics.jsonl`` and a progress line."""

from __future__ import annotations

import json
import logging
import math
import os
import time

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
            kept = self._records_up_to(resume_from) if resume_from else []
            self._file = open(self.path, "w")
            self._file.writelines(kept)

    def _records_up_to(self, iteration: int) -> list[str]:
        """A resumed run continues the same file: keep the lines of iterations it has done."""
        if not os.path.isfile(self.path):
            return []
        with open(self.path) as f:
            return [line for line in f if line.strip() and json.loads(line)["iteration"] <= iteration]

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        it = record["iteration"]
        if self._first_iter is None:
            self._first_iter = it - 1
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
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

    def close(self) -> None:
        if self._file:
            self._file.close()


def check_finite(iteration: int, loss: float, grad_norm: float) -> None:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"loss {loss}, grad norm {grad_norm} at iteration {iteration}: "
                                 "stopping (try a lower train.lr, or check the data)")
