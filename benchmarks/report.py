"""Where a benchmark's figures go: ``<out>/<stem>_<device slug>.json``, one file per device, so
results from several machines sit side by side in ``benchmarks/results/``."""

from __future__ import annotations

import json
import os
import platform


def slug(text: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``: safe in a file name."""
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def cpu_model() -> str:
    """The CPU's model name, for CPU benchmarks' ``device``."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown cpu"


def write_result(result: dict, out_dir: str, stem: str, device: str) -> str:
    """Write ``result`` as indented JSON, say where, and return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}_{slug(device)}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")
    return path


def median_ms(fn, warmup: int, repeat: int, device) -> float:
    """Median milliseconds of ``fn`` over ``repeat`` calls after ``warmup`` calls: CUDA events on a
    GPU (synchronised per call), the wall clock elsewhere."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def summarize(records: list[dict], skip: int) -> dict:
    """A training run's row from its per-step records (``metrics.jsonl``'s fields) after the first
    ``skip`` (start-up, compilation, allocator warm-up): rates over the timed steps as one span
    (tokens over seconds; TFLOP/s and MFU weighted by each step's time), not medians of per-step
    rates, since steps differ in content (one holds four large images, the next text) and the
    variants of one run see the same steps. Peak memory: the largest any step reached."""
    timed = records[skip:]
    seconds = sum(r["step_time_s"] for r in timed)

    def over_time(key):
        return sum(r[key] * r["step_time_s"] for r in timed) / seconds if all(key in r for r in timed) else None

    return {"iterations": len(timed), "tokens_per_s": sum(r["tokens"] for r in timed) / seconds,
            "step_time_s": seconds / len(timed), "tflops_per_gpu": over_time("tflops_per_gpu"),
            "mfu": over_time("mfu"), "padding": over_time("padding"),
            "max_memory_gib": max((r.get("max_memory_gib", 0.0) for r in records), default=None),
            "micro_batches": sum(r.get("micro_batches", 0) for r in timed) / len(timed),
            # Every step's loss: variants that change only kernels start from the same weights and
            # batches, so their losses must agree within bf16 noise (a correctness check).
            "losses": [r["loss"] for r in records]}
