"""The joint encoder-LLM schedule against the baseline, side by side in one run, and the
simulator's prediction of both.

    python benchmarks/pipeline_bench.py --data DIR [--config examples/configs/omni_2b.yaml]
        [--nproc 2] [--iters 14] [--warmup 4] [--profile 3] [--out benchmarks/results] [KEY=VALUE ...]

Trains the same steps (same initial weights, same packed micro-batches) once per run with ``pretrain_omni.py``:

- ``megatron``: encoders on pipeline stage 0, megatron-core's own schedule (the baseline);
- ``megatron_plan``: the same policy and order through megaomni's executor, recording its timeline
  (shows the executor itself neither gains nor loses against megatron-core);
- ``joint``: every pipeline rank encodes a share of each micro-batch in the bubbles;
- ``joint_single``: the same with one micro-batch per encoder call (shows what grouping gives).

Throughput is tokens/s over the iterations after ``--warmup``. The simulator's rates are fitted
on the first ``--profile`` measured joint steps (the profiling pass); every later step of every
run is then predicted from its plan and micro-batches and compared with what was measured.
Writes ``pipeline_bench_<device>.json`` and the recorded and simulated timelines as PNGs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import slug, write_result  # noqa: E402

from megaomni.pipeline.replay import fit, load_records, predict  # noqa: E402
from megaomni.pipeline.timeline import Timeline  # noqa: E402

RUNS = {
    "megatron": ("pipeline.schedule=megatron",),
    "megatron_plan": ("pipeline.schedule=megatron", "pipeline.executor=plan"),
    "joint": ("pipeline.schedule=joint",),
    "joint_single": ("pipeline.schedule=joint", "pipeline.encoder_group=1"),
}


def launch(name: str, args, out: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           os.path.join(ROOT, "pretrain_omni.py"), "--config", args.config, f"data.path={args.data}",
           "checkpoint.save_interval=0", "checkpoint.save_last=false", f"train.output_dir={out}",
           "train.overwrite=true", *overrides]  # without --reuse, --work's runs are made again
    print("+", " ".join(cmd), flush=True)
    # Own session, so a hung run's whole process tree can be signalled; SIGABRT makes every
    # rank's faulthandler print where it waits.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "4", "PYTHONFAULTHANDLER": "1"})
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout or None)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        stdout, stderr = proc.communicate()
        raise SystemExit(f"{name} took over {args.timeout} s (stacks below):\n{stdout[-3000:]}\n{stderr[-12000:]}")
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}")


def initial_weights(args, work: str) -> str:
    """One checkpoint of initial weights that every run loads (resharded to its layout): each
    policy splits the LLM's layers its own way, and a layer drawn on another pipeline rank
    draws other values, so from their own draws the runs would train different models."""
    path = os.path.join(work, "init")
    if not (args.reuse and os.path.isdir(path)):
        launch("initial weights", args, os.path.join(work, "init_run"), "train.iters=0", f"checkpoint.save={path}",
               *args.overrides)
    return os.path.join(path, "iter_0000000")


def train(name: str, args, work: str, init: str) -> str:
    out = os.path.join(work, name)
    if args.reuse and os.path.exists(os.path.join(out, "metrics.jsonl")):
        return out
    launch(name, args, out, f"train.iters={args.iters}", "pipeline.timeline_interval=1", f"checkpoint.load={init}",
           *RUNS[name], *args.overrides)
    last = metrics(out)[-1]
    print(f"  {name}: {last['iteration']} iterations, last {last['step_time_s']:.3f} s/it, "
          f"{last['tokens_per_s']:,.0f} tokens/s, loss {last['loss']:.4f}", flush=True)
    return out


def metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarise(name: str, out: str, warmup: int, rates, calibration: set[int], overhead: float | None) -> dict:
    """Throughput after warm-up, and the simulator's prediction of every step not used to fit."""
    steps = {m["iteration"]: m for m in metrics(out) if m["iteration"] > warmup}
    records = {r["iteration"]: r for r in load_records(os.path.join(out, "timelines"))}
    spans = {i: records[i]["timeline"]["step_time_s"] for i in steps if records[i].get("timeline")}
    if overhead is None:  # step time outside the pipeline schedule: optimizer, data, logging
        overhead = sum(steps[i]["step_time_s"] - spans[i] for i in calibration) / len(calibration)
    rows = []
    for i, m in sorted(steps.items()):
        if i in calibration:
            continue
        simulated = predict(records[i], rates)
        rows.append({"iteration": i, "measured_step_s": m["step_time_s"],
                     "predicted_step_s": simulated.step_time + overhead,
                     "measured_schedule_s": spans.get(i), "predicted_schedule_s": simulated.step_time,
                     "measured_bubble": records[i]["timeline"]["bubble"] if i in spans else None,
                     "simulated_bubble": simulated.bubble})
    measured = sum(r["measured_step_s"] for r in rows)
    predicted = sum(r["predicted_step_s"] for r in rows)
    bubbles = [r["measured_bubble"] for r in rows if r["measured_bubble"] is not None]
    return {
        "run": name, "overrides": list(RUNS[name]),
        "tokens_per_s": sum(m["tokens"] for m in steps.values()) / sum(m["step_time_s"] for m in steps.values()),
        "step_time_s": sum(m["step_time_s"] for m in steps.values()) / len(steps),
        "measured_bubble": sum(bubbles) / len(bubbles) if bubbles else None,
        "simulated_bubble": sum(r["simulated_bubble"] for r in rows) / len(rows),
        "overhead_s": overhead,
        "prediction_error": predicted / measured - 1.0,
        "max_step_prediction_error": max(abs(r["predicted_step_s"] / r["measured_step_s"] - 1.0) for r in rows),
        "steps": rows,
        "losses": [m["loss"] for m in metrics(out)],  # every iteration's: the runs train alike
        "max_memory_gib": max((m.get("max_memory_gib", 0.0) for m in metrics(out)), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "configs", "omni_2b.yaml"))
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--iters", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--profile", type=int, default=3, help="measured joint steps the rates are fitted on")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--work", default="", help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--runs", default=",".join(RUNS), help="which of " + ", ".join(RUNS))
    parser.add_argument("--timeout", type=float, default=0, help="seconds a run may take (0: no limit)")
    parser.add_argument("--reuse", action="store_true", help="analyse the runs already in --work")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every run")
    args = parser.parse_args()

    import megatron.core
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    work = args.work or tempfile.mkdtemp(prefix="pipeline_bench_")
    names = [n for n in RUNS if n in args.runs.split(",")]
    init = initial_weights(args, work)
    outs = {name: train(name, args, work, init) for name in names}

    calibration = set(range(args.warmup + 1, args.warmup + 1 + args.profile))
    joint_records = [r for r in load_records(os.path.join(outs["joint"], "timelines")) if r["iteration"] in calibration]
    rates = fit(joint_records)
    joint = summarise("joint", outs["joint"], args.warmup, rates, calibration, None)
    runs = [joint]
    if "joint_single" in outs:
        runs.append(summarise("joint_single", outs["joint_single"], args.warmup, rates, calibration, None))
    overhead = joint["overhead_s"]
    if "megatron_plan" in outs:
        runs.insert(0, summarise("megatron_plan", outs["megatron_plan"], args.warmup, rates, calibration, None))
        overhead = runs[0]["overhead_s"]
    # megatron-core's own schedule records no events: its steps take an executor run's overhead
    # (optimizer step, data, logging), the baseline's when it ran.
    baseline = summarise("megatron", outs["megatron"], args.warmup, rates, calibration, overhead)
    runs.insert(0, baseline)

    os.makedirs(args.out, exist_ok=True)
    stem = f"pipeline_bench_{slug(device)}"
    last = args.iters
    for name in [n for n in ("megatron_plan", "joint", "joint_single") if n in outs]:
        record = next(r for r in load_records(os.path.join(outs[name], "timelines")) if r["iteration"] == last)
        label = "megatron (encoders on stage 0)" if name == "megatron_plan" else name.replace("_", ", ")
        Timeline.from_dict(record["timeline"]).draw(os.path.join(args.out, f"{stem}_{name}_measured.png"),
                                                    f"{label}: measured, iteration {last}, {device} x{args.nproc}")
        predict(record, rates).draw(os.path.join(args.out, f"{stem}_{name}_simulated.png"),
                                    f"{label}: simulated, iteration {last}")

    speedup = joint["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"\n{device} x{args.nproc}, {args.config}, iterations {args.warmup + 1}-{args.iters}")
    print("| run | tokens/s | step s | bubble (measured) | bubble (simulated) | simulator error | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        bubble = "-" if r["measured_bubble"] is None else f"{r['measured_bubble']:.1%}"
        print(f"| {r['run']} | {r['tokens_per_s']:,.0f} | {r['step_time_s']:.3f} | {bubble} | "
              f"{r['simulated_bubble']:.1%} | {r['prediction_error']:+.1%} "
              f"(worst step {r['max_step_prediction_error']:.1%}) | {r['max_memory_gib']:.1f} |")
    for r in runs:
        print(f"losses {r['run']}: " + " ".join(f"{x:.4f}" for x in r["losses"]))
    loss_gap = max(abs(a - b) for r in runs for a, b in zip(r["losses"], baseline["losses"]))
    print(f"joint / megatron throughput: {speedup:.2f}x; largest loss difference from megatron's: {loss_gap:.4f}")
    write_result({
        "benchmark": "pipeline_bench", "device": device, "gpus": args.nproc,
        "versions": {"torch": torch.__version__, "megatron_core": megatron.core.__version__,
                     "cuda": torch.version.cuda},
        "config": os.path.relpath(args.config, ROOT), "overrides": args.overrides, "data": args.data,
        "iters": args.iters, "warmup": args.warmup, "profile_iterations": sorted(calibration),
        "fitted_rates": {"per_flop": rates.per_flop, "floor": rates.floor,
                         "bytes_per_s": rates.bytes_per_s, "latency": rates.latency},
        "joint_over_megatron": speedup, "max_loss_difference": loss_gap, "runs": runs,
    }, args.out, "pipeline_bench", device)


if __name__ == "__main__":
    main()
