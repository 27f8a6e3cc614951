"""The MoE experts' GEMMs, each implementation of megaomni.ops.grouped_gemm side by side: the
loop (megatron-core's SequentialMLP does this), ``torch._grouped_mm`` over weights stacked in the
call, and the cuBLAS grouped GEMM extension (csrc/grouped_gemm.cu).

    PYTHONPATH=. python benchmarks/grouped_gemm_bench.py [--tokens 8192] [--repeat 20] [--quick]
        [--out benchmarks/results]

One MoE layer's local experts (no expert parallelism): fc1 (hidden -> 2 x ffn, SwiGLU's gate and
up) and fc2 (ffn -> hidden), forward and backward (input and weight gradients), the activation
between them left out. ``--tokens`` tokens each routed to top-k experts: ``uniform`` (equal
counts) or ``skewed`` (counts ~ 1/(rank+1), the busiest experts first, the tail empty), bf16.
TFLOP/s count 3 x 2 x rows x in x out per linear (forward, input gradient, weight gradient).
Shapes: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, ffn 768), Mixtral-8x7B (8, top-2, 4096,
14336), DeepSeek-V2-Lite (64 routed, top-6, 2048, 1408). Each result is checked against the
loop (relative error of the fc2 output and of the first expert's fc1 gradient).

``--quick``: tiny shapes, on the CPU (the smoke test). Writes ``grouped_gemm_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import cpu_model, median_ms, write_result  # noqa: E402

from megaomni.config import ConfigError  # noqa: E402
from megaomni.ops.grouped_gemm import grouped_linear, resolve  # noqa: E402

# name -> (experts, top_k, hidden, ffn)
SHAPES = {
    "qwen3_30b_a3b": (128, 8, 2048, 768),
    "mixtral_8x7b": (8, 2, 4096, 14336),
    "deepseek_v2_lite": (64, 6, 2048, 1408),
}
QUICK_SHAPES = {"tiny": (8, 2, 64, 96)}


def token_counts(rows: int, experts: int, skewed: bool) -> torch.Tensor:
    """``rows`` routed rows over ``experts``: equal, or ~ 1/(rank+1) with the last quarter empty."""
    if skewed:
        live = max(1, experts - experts // 4)
        weights = torch.tensor([1.0 / (r + 1) for r in range(live)] + [0.0] * (experts - live))
    else:
        weights = torch.ones(experts)
    counts = (weights / weights.sum() * rows).floor().long()
    counts[0] += rows - counts.sum()
    return counts


def layer_step(x, fc1, fc2, offsets, impl):
    """fc1 and fc2 forward, then backward of both (the activation between them left out)."""
    h = grouped_linear(x, fc1, offsets, impl)
    y = grouped_linear(h[:, : h.shape[1] // 2].contiguous(), fc2, offsets, impl)
    grads = torch.autograd.grad(y, [x, *fc1, *fc2], torch.ones_like(y))
    return y, grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def bench_shape(name, shape, tokens, skewed, device, dtype, repeat, warmup) -> list[dict]:
    experts, top_k, hidden, ffn = shape
    rows = tokens * top_k
    counts = token_counts(rows, experts, skewed)
    offsets = counts.cumsum(0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(rows, hidden, generator=gen) * 0.5).to(device, dtype).requires_grad_()
    fc1 = [(torch.randn(2 * ffn, hidden, generator=gen) / hidden**0.5).to(device, dtype).requires_grad_()
           for _ in range(experts)]
    fc2 = [(torch.randn(hidden, ffn, generator=gen) / ffn**0.5).to(device, dtype).requires_grad_()
           for _ in range(experts)]
    flops = 3 * 2 * rows * (hidden * 2 * ffn + ffn * hidden)
    reference = layer_step(x, fc1, fc2, offsets, "loop")
    results = []
    for impl in ("loop", "torch", "cuda"):
        row = {"shape": name, "counts": "skewed" if skewed else "uniform", "impl": impl, "experts": experts,
               "top_k": top_k, "hidden": hidden, "ffn": ffn, "tokens": tokens,
               "empty_experts": int((counts == 0).sum())}
        try:
            resolve(impl, x.device, dtype, experts)
        except ConfigError as err:
            results.append({**row, "skipped": str(err)})
            continue
        y, grads = layer_step(x, fc1, fc2, offsets, impl)
        row["error_out"] = relative_error(y, reference[0])
        row["error_grad_fc1"] = relative_error(grads[1], reference[1][1])
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = median_ms(lambda: layer_step(x, fc1, fc2, offsets, impl), warmup, repeat, device)
        row.update(ms=ms, tflops=flops / ms / 1e9)
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        results.append(row)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    dtype = torch.bfloat16
    shapes, tokens = (QUICK_SHAPES, 32) if args.quick else (SHAPES, args.tokens)
    rows = [r for name, shape in shapes.items() for skewed in (False, True)
            for r in bench_shape(name, shape, tokens, skewed, device, dtype, args.repeat, args.warmup)]
    print(f"{'shape':18} {'counts':8} {'impl':6} {'ms':>9} {'TFLOP/s':>8} {'vs loop':>8} {'err out':>9} {'err dW':>9}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['shape']:18} {r['counts']:8} {r['impl']:6} skipped: {r['skipped']}")
            continue
        loop = next(x for x in rows if x["shape"] == r["shape"] and x["counts"] == r["counts"] and x["impl"] == "loop")
        r["speedup_vs_loop"] = loop["ms"] / r["ms"]
        print(f"{r['shape']:18} {r['counts']:8} {r['impl']:6} {r['ms']:9.3f} {r['tflops']:8.1f} "
              f"{r['speedup_vs_loop']:7.2f}x {r['error_out']:9.2e} {r['error_grad_fc1']:9.2e}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    result = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": str(dtype),
              "tokens": tokens, "results": rows}
    write_result(result, args.out, "grouped_gemm_quick" if args.quick else "grouped_gemm", name)
    return result


if __name__ == "__main__":
    main()
