"""Layout parity on the machine here (GPUs with NCCL, or CPU with gloo): the layouts of the CPU
parity tests (tests/parallel/layouts.py), each trained 3 iterations from the same initial weights
as a single-process reference, compared by loss and grad norm. Prints a table and writes JSON.

    python benchmarks/layout_parity.py --data data/toy [--bf16] [--layouts tp2,pp2,cp2,ep2,dp2_distopt]
        [--tolerance 1e-5] [--out benchmarks/results]

Exit status 1 when a layout's largest relative difference exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from report import write_result  # noqa: E402  (benchmarks/report.py; this folder is on sys.path)
from tests.parallel.layouts import COMMON, LAYOUTS, ParitySetup, max_relative_difference  # noqa: E402


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="toy data directory (tools/make_toy_data.py)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--layouts", default=",".join(name for name, *_ in LAYOUTS))
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    chosen = args.layouts.split(",")
    unknown = set(chosen) - {name for name, *_ in LAYOUTS}
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; known: {[name for name, *_ in LAYOUTS]}")

    import megatron.core
    import torch

    extra = ("train.bf16=true",) if args.bf16 else ()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        setup = ParitySetup(os.path.abspath(args.data), Path(work), extra)
        for name, nproc, overrides, models in LAYOUTS:
            if name not in chosen:
                continue
            for model in models:
                records = setup.run(model, Path(work) / f"{model.name}_{name}", *overrides, nproc=nproc)
                diff = max_relative_difference(setup.reference(model), records)
                rows.append({"model": model.name, "layout": name, "ranks": nproc, "overrides": list(overrides),
                             "max_rel_diff_loss": diff["loss"], "max_rel_diff_grad_norm": diff["grad_norm"],
                             "passed": max(diff.values()) <= args.tolerance})

    precision = "bf16" if args.bf16 else "fp32"
    print(f"\nlayout parity, {precision}, 3 iterations vs one process, tolerance {args.tolerance:g} (relative)")
    print(f"{'model':6} {'layout':14} {'ranks':>5} {'loss':>10} {'grad norm':>10}  ok")
    for r in rows:
        print(f"{r['model']:6} {r['layout']:14} {r['ranks']:>5} {r['max_rel_diff_loss']:>10.2e} "
              f"{r['max_rel_diff_grad_norm']:>10.2e}  {'yes' if r['passed'] else 'NO'}")
    device = _device_name()
    result = {
        "device": device, "device_count": torch.cuda.device_count(),
        "versions": {"torch": torch.__version__, "megatron_core": megatron.core.__version__,
                     "python": platform.python_version()},
        "precision": precision, "tolerance": args.tolerance, "iterations": 3, "common_overrides": list(COMMON),
        "results": rows,
    }
    write_result(result, args.out, f"layout_parity_{precision}", device)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
