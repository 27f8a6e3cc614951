"""Does a change leave training exactly as it was? Trains the tiny recipe (tools/make_toy_data.py's
data, one seed) with this checkout and with another (``--other``, e.g. a ``git worktree`` of the
commit before the change), in fp32 and bf16, and compares every iteration's metrics bit for bit.
Prints a table and writes ``benchmarks/results/same_run_<device>.json``.

    git worktree add /tmp/before COMMIT
    python benchmarks/same_run.py --other /tmp/before [--iters 50] [--labels NEW OLD]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile

from report import write_result  # benchmarks/report.py: run as a script, this folder is on sys.path
from tiny_omni import ROOT, _run

# Timing fields (and those made from them) differ run to run; everything else a run logs must be equal.
TIMING = ("tokens_per_s", "step_time_s", "max_memory_gib", "tflops_per_gpu", "mfu")


def differences(a: list[dict], b: list[dict]) -> list[str]:
    """Every metric of every iteration that is not bit-identical (``iteration: key a != b``)."""
    if len(a) != len(b):
        return [f"{len(a)} iterations != {len(b)}"]
    return [f"{x['iteration']}: {k} {x.get(k)!r} != {y.get(k)!r}" for x, y in zip(a, b)
            for k in sorted(set(x) | set(y)) if k not in TIMING and x.get(k) != y.get(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, help="another checkout of megaomni (the code before a change)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--labels", nargs=2, default=("this", "other"), metavar=("THIS", "OTHER"),
                        help="what the two checkouts are, for the record (e.g. their commits)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    import megatron.core
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    other = os.path.abspath(args.other)
    labels = dict(zip(("this", "other"), args.labels))
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "toy")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_toy_data.py"), "--out", data],
                       check=True, cwd=ROOT, capture_output=True)
        for precision, overrides in (("fp32", ()), ("bf16", ("train.bf16=true",))):
            this = _run(work, f"this_{precision}", data, args.iters, *overrides, "checkpoint.save_last=false")
            before = _run(work, f"other_{precision}", data, args.iters, *overrides, "checkpoint.save_last=false",
                          root=other)
            diffs = differences(this, before)
            runs[precision] = {"iterations": len(this), "identical": not diffs, "differences": diffs[:20],
                               "final_loss": [this[-1]["loss"], before[-1]["loss"]]}
    result = {"benchmark": "same_run", "device": device, "checkouts": labels,
              "versions": {"torch": torch.__version__, "megatron_core": megatron.core.__version__,
                           "python": platform.python_version()},
              "config": {"recipe": "examples/configs/tiny_omni.yaml", "iters": args.iters}, "runs": runs}
    print(f"device: {device}; {labels['this']} vs {labels['other']}; {args.iters} iterations")
    print(f"{'run':<6}{'identical':>10}{'final loss (this / other)':>34}")
    for name, r in runs.items():
        print(f"{name:<6}{str(r['identical']):>10}{r['final_loss'][0]:>17.6f} / {r['final_loss'][1]:.6f}")
        for line in r["differences"]:
            print(f"    {line}")
    write_result(result, args.out, "same_run", device)


if __name__ == "__main__":
    main()
