"""One-GPU training speed of a recipe, in variants side by side in one run: tokens/s per GPU,
model TFLOP/s and MFU (megaomni/flops.py; recomputation not counted), peak memory, step time.

    python benchmarks/omni_bench.py --config examples/configs/vl_2b.yaml [--iters 8] [--skip 3]
        [--variant NAME=KEY=VALUE,KEY=VALUE ...] [--baseline] [--name SUFFIX] [--out benchmarks/results] [OVERRIDE ...]

Each variant is a ``pretrain_omni.py`` run of the recipe with its overrides (after the common
``OVERRIDE``s); figures are over the iterations after the first ``--skip`` (start-up,
compilation, allocator warm-up) as one span (report.summarize), peak memory the largest any
iteration reached. A run that fails (out of memory, say) is a row with its last log line.
Without ``--variant``: the activation
recomputation table (none, selective core attention, full LLM, full everywhere). ``--baseline``
adds the plain-PyTorch model of the recipe on the same batches (benchmarks/plain_omni.py, a row
``plain_pytorch``, with the common ``OVERRIDE``s) and each variant's tokens/s over the baseline's
(``vs_plain``).
Writes ``omni_bench_<recipe>[_<name>]_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from report import summarize, write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECOMPUTE_VARIANTS = [
    "none=train.recompute=none",
    "selective_core_attn=train.recompute=selective,train.recompute_modules=[core_attn]",
    "full_llm=train.recompute=full,train.recompute_parts=[llm]",
    "full_all=train.recompute=full",
]


def _variant(text: str) -> tuple[str, list[str]]:
    name, _, overrides = text.partition("=")
    # Commas inside [...] belong to a list value.
    parts, depth, current = [], 0, ""
    for ch in overrides:
        depth += ch == "[" or -(ch == "]")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return name, [p for p in [*parts, current] if p]


def _why(proc: subprocess.CompletedProcess) -> str:
    """A failed run's reason: its last error line (out of memory, say), else its last line."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error:" in line]
    return (errors or lines or [f"exit {proc.returncode}"])[-1]


def run_variant(config: str, name: str, overrides: list[str], common: list[str], iters: int, skip: int,
                work: str) -> dict:
    out = os.path.join(work, name)
    cmd = [sys.executable, os.path.join(ROOT, "pretrain_omni.py"), "--config", config, f"train.output_dir={out}",
           f"train.iters={iters}", "train.overwrite=true", "checkpoint.save_last=false", *common, *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "console.txt"), "w") as f:  # beside the run's log: torch's own warnings too
        f.write(proc.stdout + proc.stderr)
    row = {"variant": name, "overrides": overrides}
    metrics = os.path.join(out, "metrics.jsonl")
    records = []
    if os.path.isfile(metrics):
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    if proc.returncode or len(records) <= skip:
        return {**row, "failed": _why(proc)}
    return {**row, **summarize(records, skip)}


def run_baseline(config: str, common: list[str], iters: int, skip: int, work: str) -> dict:
    """benchmarks/plain_omni.py's row, in its own process as the variants run."""
    out = os.path.join(work, "plain_pytorch.json")
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "plain_omni.py"), "--config", config, "--iters", str(iters),
           "--skip", str(skip), "--json", out, *common, f"train.output_dir={os.path.join(work, 'plain_pytorch')}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode or not os.path.isfile(out):
        return {"variant": "plain_pytorch", "failed": _why(proc)}
    with open(out) as f:
        return json.load(f)


def with_ratios(rows: list[dict], baseline: dict) -> list[dict]:
    """Each megaomni row's tokens/s over the baseline's (``vs_plain``; absent where either failed)."""
    if "failed" in baseline:
        return rows
    return [r if "failed" in r else {**r, "vs_plain": r["tokens_per_s"] / baseline["tokens_per_s"]} for r in rows]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--baseline", action="store_true", help="add the plain-PyTorch row (plain_omni.py)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--work", default="")
    parser.add_argument("--name", default="", help="a suffix of the result file's name")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    variants = [_variant(v) for v in (args.variant or RECOMPUTE_VARIANTS)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or tmp
        rows = [run_variant(args.config, name, overrides, args.overrides, args.iters, args.skip, work)
                for name, overrides in variants]
        if args.baseline:
            baseline = run_baseline(args.config, args.overrides, args.iters, args.skip, work)
            rows = [*with_ratios(rows, baseline), baseline]
    print(f"{'variant':22} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'s/step':>7} {'peak GiB':>9} {'vs plain':>8}")
    for r in rows:
        if "failed" in r:
            print(f"{r['variant']:22} failed: {r['failed'][:100]}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        ratio = f"{r['vs_plain']:.2f}x" if "vs_plain" in r else ""
        print(f"{r['variant']:22} {r['tokens_per_s']:9.0f} {r['tflops_per_gpu']:8.1f} {mfu:>6} {r['step_time_s']:7.2f} "
              f"{r['max_memory_gib'] or 0:9.1f} {ratio:>8}")
    stem = os.path.splitext(os.path.basename(args.config))[0]
    result = {"device": device, "torch": torch.__version__, "config": args.config, "overrides": args.overrides,
              "iters": args.iters, "skip": args.skip, "results": rows}
    write_result(result, args.out, f"omni_bench_{stem}{'_' + args.name if args.name else ''}", device)
    return result


if __name__ == "__main__":
    main()
