"""Model build time, with megatron-core's own weight draws and with them skipped
(``megaomni.models.initial_weights.draws_deferred``), side by side in one process: the start-up
a large LLM costs before its first step. Both builds must give the same weights.

    PYTHONPATH=. python benchmarks/build_bench.py [--config examples/configs/omni_moe.yaml]
        [--vocab 151936] [--repeat 2] [--out benchmarks/results] [overrides ...]

Builds on the CPU, as the trainer does (megatron-core's CPU initialisation; the model moves to
the GPU after). Writes ``build_bench_<config>_<cpu>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import cpu_model, write_result  # noqa: E402

from megaomni.config import load_config  # noqa: E402
from megaomni.models import build  # noqa: E402
from megaomni.platform.distributed import init_distributed  # noqa: E402


def timed_build(cfg, vocab: int, deferred: bool) -> tuple[float, list[float]]:
    """Seconds to build the model, and a digest of each LLM parameter's bytes."""
    real = build.draws_deferred
    build.draws_deferred = real if deferred else (lambda config: contextlib.nullcontext())
    try:
        start = time.perf_counter()
        model = build.build_model(cfg, vocab, lambda name: 5)
        seconds = time.perf_counter() - start
    finally:
        build.draws_deferred = real
    return seconds, [hashlib.blake2b(p.detach().contiguous().view(torch.uint8).numpy()).hexdigest()
                     for p in model.llm.parameters()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "configs", "omni_moe.yaml"))
    parser.add_argument("--vocab", type=int, default=151936, help="the tokenizer's (Qwen2's by default)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.llm.num_layers=1")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, ["train.device=cpu", *args.overrides])
    init_distributed(cfg)
    rows = {"megatron draws, then redrawn": [], "draws deferred": []}
    sums = {}
    for _ in range(args.repeat):  # alternated, so that neither row has the warm caches alone
        for name, deferred in (("megatron draws, then redrawn", False), ("draws deferred", True)):
            seconds, sums[name] = timed_build(cfg, args.vocab, deferred)
            rows[name].append(seconds)
    same = sums["megatron draws, then redrawn"] == sums["draws deferred"]
    print(f"{'build':<30}{'best s':>10}{'all s':>24}")
    for name, times in rows.items():
        print(f"{name:<30}{min(times):>10.1f}{', '.join(f'{t:.1f}' for t in times):>24}")
    ratio = min(rows["megatron draws, then redrawn"]) / min(rows["draws deferred"])
    print(f"speed-up {ratio:.2f}x; weights the same: {same}")
    device = cpu_model()
    result = {"device": device, "cpus": os.cpu_count(), "torch": torch.__version__,
              "megatron_core": __import__("megatron.core").core.__version__,
              "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides, "vocab": args.vocab,
              "llm_parameter_tensors": len(sums["draws deferred"]),
              "seconds": rows, "speedup": ratio, "weights_same": same}
    write_result(result, args.out, "build_bench_" + os.path.splitext(os.path.basename(args.config))[0], device)
    if not same:
        sys.exit("the two builds gave different weights")
    return result


if __name__ == "__main__":
    main()
