"""How well the simulator predicts a recorded run's step times, from that run alone.

    python benchmarks/simulator_check.py --run DIR [--calibrate 4,5,6] [--out benchmarks/results]

``DIR`` holds a training run's ``metrics.jsonl`` and ``timelines/`` (``pipeline.timeline_interval=1``;
any schedule, megatron-core's too: the timelines hold each step's micro-batches and plan). One
rate, seconds per FLOP for every kind of action with the step's overhead folded in, is fitted on
the ``--calibrate`` iterations; every later iteration is predicted from its plan and micro-batches
and compared with its measured ``step_time_s``. Prints a table and writes
``simulator_check_<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from report import write_result  # noqa: E402

from megaomni.pipeline.costs import Rates  # noqa: E402
from megaomni.pipeline.replay import load_records, predict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run's folder: metrics.jsonl (or metrics*.jsonl) and timelines/")
    parser.add_argument("--calibrate", default="4,5,6", help="iterations the rate is fitted on")
    parser.add_argument("--name", default="", help="result file suffix (default: the run folder's name)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "benchmarks", "results"))
    args = parser.parse_args()

    timelines = os.path.join(args.run, "timelines")
    records = {r["iteration"]: r for r in load_records(timelines if os.path.isdir(timelines) else args.run)}
    metrics_file = next(os.path.join(args.run, f) for f in sorted(os.listdir(args.run))
                        if f.startswith("metrics") and f.endswith(".jsonl"))
    with open(metrics_file) as f:
        measured = {m["iteration"]: m["step_time_s"] for m in map(json.loads, filter(str.strip, f))}
    calibrate = [int(i) for i in args.calibrate.split(",")]
    simulated = {i: predict(r, Rates()).step_time for i, r in records.items() if i in measured}
    scale = sum(measured[i] for i in calibrate) / sum(simulated[i] for i in calibrate)
    rows = [{"iteration": i, "measured_s": measured[i], "predicted_s": simulated[i] * scale,
             "error": simulated[i] * scale / measured[i] - 1.0}
            for i in sorted(simulated) if i > max(calibrate)]
    total = sum(r["predicted_s"] for r in rows) / sum(r["measured_s"] for r in rows) - 1.0

    print(f"rate fitted on iterations {calibrate}: {400 / scale:.0f} TFLOP/s effective (400 at scale 1)")
    print("| iteration | measured s | predicted s | error |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['iteration']} | {r['measured_s']:.3f} | {r['predicted_s']:.3f} | {r['error']:+.1%} |")
    print(f"all predicted steps: {total:+.1%}; worst step {max(abs(r['error']) for r in rows):.1%}")
    first = next(iter(records.values()))
    write_result({"benchmark": "simulator_check", "run": args.run, "schedule": first["schedule"],
                  "executor": first["executor"], "pp": first["pp"], "vpp": first["vpp"],
                  "calibrate": calibrate, "seconds_per_flop": Rates().per_flop["llm_f"] * scale,
                  "total_error": total, "steps": rows},
                 args.out, "simulator_check", args.name or os.path.basename(os.path.normpath(args.run)))


if __name__ == "__main__":
    main()
