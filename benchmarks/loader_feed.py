"""Does the streaming loader keep a GPU fed? On a data set (tools/make_synthetic_data.py's omni
mix by default) and a recipe (omni_2b), one data-parallel rank's loader: how fast it hands out
steps at each ``data.workers`` (samples/s, LLM tokens/s, its start-up with the index built), next
to what a training run of the recipe on this machine consumes (its tokens/s, from a short run of
``pretrain_omni.py`` with ``--train-iters``). Prints a table; writes
``benchmarks/results/loader_feed_<device>.json``.

    python benchmarks/loader_feed.py --data DIR [--samples 2000] [--makers 8] [--workers 0,2,4,8]
        [--steps 20] [--config examples/configs/omni_2b.yaml] [--train-iters 12] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from report import cpu_model, write_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def loader_rate(config: str, overrides: list[str], workers: int, steps: int) -> dict:
    """Steps handed out per second by one rank's loader (after one warm-up step)."""
    from megaomni.config import load_config
    from megaomni.data.loader import OmniDataLoader
    from megaomni.data.tokenizer import load_tokenizer

    cfg = load_config(config, [*overrides, f"data.workers={workers}", "train.device=cpu"])
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    started = time.perf_counter()
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    startup = time.perf_counter() - started
    loader.next_step()
    samples = tokens = 0
    started = time.perf_counter()
    for _ in range(steps):
        for batch in loader.next_step():
            samples += batch.num_samples
            tokens += int((batch.tokens != tokenizer.pad_id).sum())
    seconds = time.perf_counter() - started
    loader.close()
    return {"workers": workers, "startup_s": startup, "steps_per_s": steps / seconds,
            "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds}


def training_rate(config: str, overrides: list[str], iters: int, out: str) -> dict:
    """tokens/s of a short run (its iterations after the first two), and its data-loader settings."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pretrain_omni.py"), "--config", config, *overrides,
                           f"train.iters={iters}", "train.warmup_iters=1", "checkpoint.save_last=false",
                           f"train.output_dir={out}", "train.overwrite=true"],  # measured again each time
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-2000:]}
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f][2:]
    seconds = sum(r["step_time_s"] for r in records)
    workers = next(o for o in reversed(overrides) if o.startswith("data.workers="))
    return {"workers": workers, "iterations": len(records), "tokens_per_s": sum(r["tokens"] for r in records) / seconds,
            "step_time_s": seconds / len(records), "mfu": sum(r.get("mfu", 0) for r in records) / len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder for the data set (made there unless it is)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "configs", "omni_2b.yaml"))
    parser.add_argument("--workers", default="0,2,4,8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--train-iters", type=int, default=12, help="0: no training run")
    parser.add_argument("--train-workers", type=int, default=4, help="the training run's data.workers")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--makers", type=int, default=1,
                        help="make the data set as this many blended parts, one process each (seeds 1..N)")
    args, overrides = parser.parse_known_args()
    parts = [os.path.join(args.data, f"part-{k}") for k in range(1, args.makers + 1)]
    if not all(os.path.isdir(p) for p in parts):
        started = time.perf_counter()
        makers = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "make_synthetic_data.py"), "--out", p,
                                    "--samples", str(args.samples // args.makers), "--seed", str(k)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL) for k, p in enumerate(parts, 1)]
        assert all(m.wait() == 0 for m in makers)
        print(f"made {args.samples} samples in {time.perf_counter() - started:.0f} s")
    overrides = [f"data.path={','.join(parts)}", f"data.tokenizer={os.path.join(parts[0], 'tokenizer.model')}",
                 *overrides]
    started = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "index_data.py"), *parts, "--config", args.config,
                    *overrides[2:], f"data.tokenizer={os.path.join(parts[0], 'tokenizer.model')}"], check=True,
                   cwd=ROOT, stderr=subprocess.DEVNULL)
    index_s = time.perf_counter() - started
    rates = [loader_rate(args.config, overrides, int(w), args.steps) for w in args.workers.split(",")]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()
    train = training_rate(args.config, [*overrides, f"data.workers={args.train_workers}"], args.train_iters,
                          os.path.join(args.data, "..", "feed_run")) \
        if args.train_iters and torch.cuda.is_available() else {}
    print(f"{device}; {os.cpu_count()} CPUs; index built in {index_s:.1f} s")
    print(f"{'workers':>8}{'start-up s':>12}{'steps/s':>10}{'samples/s':>11}{'tokens/s':>11}")
    for r in rates:
        print(f"{r['workers']:>8}{r['startup_s']:>12.2f}{r['steps_per_s']:>10.2f}{r['samples_per_s']:>11.0f}"
              f"{r['tokens_per_s']:>11.0f}")
    if train:
        print(f"training consumes: {train}")
    write_result({"benchmark": "loader_feed", "device": device, "cpus": os.cpu_count(),
                  "cpu": cpu_model(), "config": {"recipe": os.path.relpath(args.config, ROOT), "overrides": overrides,
                                                 "samples": args.samples, "steps": args.steps},
                  "index_build_s": index_s, "loader": rates, "training": train}, args.out, "loader_feed", device)


if __name__ == "__main__":
    main()
