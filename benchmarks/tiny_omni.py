"""The tiny omni recipe end to end, on whatever device is here: fp32, bf16, the media-zeroed
control, and a bf16 resume from the middle. Prints a table and writes
``benchmarks/results/tiny_omni_<device>.json``.

    python benchmarks/tiny_omni.py [--iters 200] [--out benchmarks/results]

Figures: final answer NLL (mean of the last 10 iterations) against the text-only floor
H(answer | question) of the data, median tokens/s and step time, and the largest relative
difference between the resumed and the uninterrupted run's losses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from report import write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml")


def _run(work: str, name: str, data: str, iters: int, *overrides: str, root: str = ROOT) -> list[dict]:
    """The tiny recipe trained by the code of checkout ``root`` (this one by default)."""
    out = os.path.join(work, name)
    cmd = [sys.executable, os.path.join(root, "pretrain_omni.py"), "--config", CONFIG,
           f"data.path={data}", f"train.output_dir={out}", f"train.iters={iters}",
           f"checkpoint.save={os.path.join(work, 'ckpt_' + name)}", "logging.log_interval=50", *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _summary(records: list[dict]) -> dict:
    steady = records[len(records) // 10:]  # leave out warm-up
    return {
        "final_answer_nll": sum(r["answer_nll"] for r in records[-10:]) / 10,
        "final_loss": records[-1]["loss"],
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "median_step_time_s": statistics.median(r["step_time_s"] for r in steady),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    import megatron.core
    import torch

    from megaomni.data.stats import text_only_entropy

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "toy")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_toy_data.py"), "--out", data],
                       check=True, cwd=ROOT, capture_output=True)
        floor = text_only_entropy(data)
        half = args.iters // 2
        runs = {
            "fp32": _run(work, "fp32", data, args.iters, f"checkpoint.save_interval={half}"),
            "bf16": _run(work, "bf16", data, args.iters, "train.bf16=true", f"checkpoint.save_interval={half}"),
            "blind_fp32": _run(work, "blind", data, args.iters, "data.zero_media=true"),
        }
        resumed = _run(work, "resumed", data, args.iters, "train.bf16=true",
                       f"checkpoint.load={os.path.join(work, 'ckpt_bf16', f'iter_{half:07d}')}")
    resume_diff = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(runs["bf16"][half:], resumed))

    result = {
        "benchmark": "tiny_omni",
        "device": device,
        "versions": {"torch": torch.__version__, "megatron_core": megatron.core.__version__,
                     "python": platform.python_version()},
        "config": {"recipe": os.path.relpath(CONFIG, ROOT), "iters": args.iters},
        "text_only_floor_nats": floor,
        "runs": {name: _summary(records) for name, records in runs.items()},
        "resume_bf16_max_rel_loss_diff": resume_diff,
    }
    print(f"device: {device}; torch {torch.__version__}; megatron-core {megatron.core.__version__}")
    print(f"text-only floor H(answer|question) = {floor:.3f} nats")
    print(f"{'run':<12}{'answer NLL':>12}{'final loss':>12}{'tokens/s':>10}{'s/step':>9}")
    for name, s in result["runs"].items():
        print(f"{name:<12}{s['final_answer_nll']:>12.3f}{s['final_loss']:>12.4f}"
              f"{s['median_tokens_per_s']:>10.0f}{s['median_step_time_s']:>9.3f}")
    print(f"bf16 resume from iteration {half}: max relative loss difference {resume_diff:.2e}")
    write_result(result, args.out, "tiny_omni", device)


if __name__ == "__main__":
    main()
