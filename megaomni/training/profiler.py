"""``logging.profile_start`` / ``profile_steps``: torch.profiler over a few iterations, written per
rank as a Chrome trace (chrome://tracing, Perfetto) and a table of the operators and kernels that
took the most device time, with the share of the profiled wall time the GPU was busy (on a GPU, a
second table of the operators by host time)."""

from __future__ import annotations

import logging
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

log = logging.getLogger("megaomni.train")


class StepProfiler:
    def __init__(self, start: int, steps: int, output_dir: str, rank: int, device: torch.device):
        self.first, self.last = start, start + steps - 1
        self.folder, self.rank, self.device = os.path.join(output_dir, "profile"), rank, device
        self._prof, self._started = None, 0.0

    def before(self, iteration: int) -> None:
        if self.first and iteration == self.first:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self._prof = profile(activities=activities, record_shapes=False)
            self._prof.__enter__()
            self._started = time.perf_counter()

    def after(self, iteration: int) -> None:
        if self._prof is None or iteration != self.last:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - self._started
        self._prof.__exit__(None, None, None)
        os.makedirs(self.folder, exist_ok=True)
        self._prof.export_chrome_trace(os.path.join(self.folder, f"rank_{self.rank:05d}.json"))
        events = self._prof.key_averages()
        gpu = self.device.type == "cuda"
        key = "self_device_time_total" if gpu else "self_cpu_time_total"
        busy = sum(getattr(e, key) for e in events if not gpu or e.device_type.name == "CUDA") / 1e6
        table = events.table(sort_by=key, row_limit=40)
        if gpu:  # where a step the GPU waits on spends its host time
            table += "\nhost time (self CPU):\n" + events.table(sort_by="self_cpu_time_total", row_limit=30)
        summary = (f"iterations {self.first}-{self.last}: {wall:.3f} s wall, {'GPU kernels' if gpu else 'CPU ops'} "
                   f"{busy:.3f} s ({busy / wall:.0%} of it)\n")
        with open(os.path.join(self.folder, f"summary_rank_{self.rank:05d}.txt"), "w") as f:
            f.write(summary + table)
        if self.rank == 0:
            log.info("profile: %s-> %s", summary, self.folder)
        self._prof = None
