"""The packer's functions (megaomni/data/packing.py) timed with the Python reference and with the C++
extension on a stream of 1M samples. Prints a table and writes
``benchmarks/results/packing_<cpu>.json``.

    python benchmarks/packing_bench.py [--samples 1000000] [--image-samples 10000] [--threads 1]
                                       [--out benchmarks/results]

Sample lengths are a lognormal mix clipped to 20..4000 tokens (3/4 short turns around 200 tokens,
1/4 documents around 1500). The rows, as a loader would run them:
  ffd_pack                 all samples into 8192-token bins, window 1000
  balanced_assign          all samples onto 64 bins by cost len + len^2/4096 (attention's square term)
  balanced_assign, capped  the same with at most 1.05x the mean tokens per bin
  cu_seqlens + positions   one call per packed bin (the way a collator uses it)
  pack_copy int64 tokens   one call per packed bin into a reused 8192-row buffer
  pack_copy bf16 patches   images of 64..4096 patch rows of 1176 values into 16384-row bins
The copies read from a random place in a 64M-token (or 256K-row) source pool per sample, so memory
stays bounded while every byte of every sample is really moved. Both implementations run each row
on the same inputs and their outputs are checked equal (copies: the first 100 bins). C++: best of 3
runs; Python: one run. One torch thread by default: the packer runs in loader workers, which
torch's DataLoader runs single-threaded. The load average is recorded (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from typing import Callable

import torch

from megaomni.data import packing
from report import cpu_model, write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUDGET, WINDOW = 8192, 1000
NUM_BINS, CAP_SLACK = 64, 1.05
PATCH_DIM, PATCH_BUDGET = 1176, 16384  # 14x14 pixels x 3 channels x 2 frames, as Qwen2-VL's patches
TOKEN_POOL, PATCH_POOL = 64 * 2**20, 256 * 2**10


def lognormal_mix(n: int, g: torch.Generator, short: float, long: float, low: int, high: int) -> torch.Tensor:
    a = torch.empty(n, dtype=torch.float64).log_normal_(math.log(short), 0.9, generator=g)
    b = torch.empty(n, dtype=torch.float64).log_normal_(math.log(long), 0.6, generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.25, b, a).clamp(low, high).long()


def by_bin(bins: torch.Tensor) -> list[torch.Tensor]:
    """Sample indices of each bin, in stream order (every sample here fits, so no -1)."""
    order = torch.argsort(bins, stable=True)
    return list(torch.split(order, torch.bincount(bins).tolist()))


def copy_rows(src: torch.Tensor, offsets, lengths, groups, budget: int, impl: str) -> Callable[[], None]:
    """Each bin's samples into one reused buffer of ``budget`` rows, as a collator would."""
    buffer = torch.empty((budget, *src.shape[1:]), dtype=src.dtype)

    def run() -> None:
        for group in groups:
            packing.pack_copy(src, offsets, lengths, group, out=buffer, impl=impl)
    return run


def same_copies(src: torch.Tensor, offsets, lengths, groups) -> bool:
    """The first 100 bins packed by both implementations, compared byte for byte."""
    return all(same(packing.pack_copy(src, offsets, lengths, group, impl="python"),
                    packing.pack_copy(src, offsets, lengths, group, impl="cpp")) for group in groups[:100])


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--image-samples", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    if packing.implementation() != "cpp":
        sys.exit("megaomni._packing_ext is not built: pip install --no-build-isolation -e . first")

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    g = torch.Generator().manual_seed(0)
    n, m = args.samples, args.image_samples
    lengths = lognormal_mix(n, g, 200, 1500, 20, 4000)
    costs = lengths.double() + lengths.double() ** 2 / 4096
    capacity = math.ceil(CAP_SLACK * int(lengths.sum()) / NUM_BINS)
    token_src = torch.randint(0, 150_000, (TOKEN_POOL,), generator=g)
    token_offsets = (torch.rand(n, generator=g, dtype=torch.float64) * (TOKEN_POOL - lengths)).long()
    patches = lognormal_mix(m, g, 256, 1024, 64, 4096)
    patch_src = torch.randn((PATCH_POOL, PATCH_DIM), generator=g).to(torch.bfloat16)
    patch_offsets = (torch.rand(m, generator=g, dtype=torch.float64) * (PATCH_POOL - patches)).long()

    bins = packing.ffd_pack(lengths, BUDGET, WINDOW)
    groups = by_bin(bins)
    group_lengths = [lengths[group] for group in groups]
    patch_groups = by_bin(packing.ffd_pack(patches, PATCH_BUDGET, WINDOW))

    def rows(impl: str) -> dict[str, tuple[int, Callable[[], object]]]:
        """name -> (samples it covers, the call)."""
        return {
            "ffd_pack": (n, lambda: packing.ffd_pack(lengths, BUDGET, WINDOW, impl=impl)),
            "balanced_assign": (n, lambda: packing.balanced_assign(costs, NUM_BINS, impl=impl)),
            "balanced_assign, capped": (n, lambda: packing.balanced_assign(
                costs, NUM_BINS, lengths=lengths, capacity=capacity, impl=impl)),
            "cu_seqlens + positions": (n, lambda: [packing.cu_seqlens_and_positions(lens, impl=impl)
                                                   for lens in group_lengths]),
            "pack_copy int64 tokens": (n, copy_rows(token_src, token_offsets, lengths, groups, BUDGET, impl)),
            "pack_copy bf16 patches": (m, copy_rows(patch_src, patch_offsets, patches, patch_groups,
                                                    PATCH_BUDGET, impl)),
        }

    if not (same_copies(token_src, token_offsets, lengths, groups)
            and same_copies(patch_src, patch_offsets, patches, patch_groups)):
        sys.exit("pack_copy: the C++ and Python outputs differ")
    figures = {}
    print(f"{'function':<26}{'samples':>10}{'python s':>10}{'C++ s':>10}{'speed-up':>10}")
    for (name, (count, python)), (_, (_, cpp)) in zip(rows("python").items(), rows("cpp").items()):
        python_s, expected = timed(python, 1)
        cpp_s, got = timed(cpp, 3)
        if not same(expected, got):
            sys.exit(f"{name}: the C++ and Python outputs differ")
        figures[name] = {"samples": count, "python_s": python_s, "cpp_s": cpp_s, "speedup": python_s / cpp_s}
        print(f"{name:<26}{count:>10,}{python_s:>10.3f}{cpp_s:>10.3f}{python_s / cpp_s:>9.1f}x", flush=True)

    device = f"{cpu_model()} ({os.cpu_count()} cores)"
    result = {
        "benchmark": "packing",
        "device": device,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "config": {
            "samples": n, "image_samples": m, "budget": BUDGET, "window": WINDOW,
            "lengths": "lognormal mix clipped to 20..4000: 3/4 median 200 (sigma 0.9), 1/4 median 1500 (sigma 0.6)",
            "mean_length": float(lengths.double().mean()), "packed_bins": len(groups),
            "balanced_bins": NUM_BINS, "cost": "len + len^2/4096", "capacity_tokens": capacity,
            "patch_dim": PATCH_DIM, "patch_budget": PATCH_BUDGET, "patch_bins": len(patch_groups),
            "mean_patches": float(patches.double().mean()),
            "timing": "C++: best of 3 runs; Python reference: one run; both on every listed sample",
        },
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "figures": figures,
    }
    print(f"device: {device}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"{len(groups):,} token bins, {len(patch_groups):,} patch bins")
    write_result(result, args.out, "packing", cpu_model())


if __name__ == "__main__":
    main()
