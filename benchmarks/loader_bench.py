"""The input side: how fast the streaming loader (megaomni/data/loader.py) indexes, starts, decodes
and steps, what memory it holds, and how much padding and rank imbalance packing and balancing
remove. Prints tables and writes ``benchmarks/results/loader_streaming_<cpu>.json``.

    python benchmarks/loader_bench.py [--corpora DIR] [--sizes 2000,20000,200000] [--steps 500]
        [--workers 0,1,2] [--data data/toy] [--synthetic-steps 50] [--out benchmarks/results]

Workloads:
- synthetic corpora (tools/make_synthetic_data.py: its default image/audio/video/text mix at small
  media sizes, 250 samples a shard), written once under --corpora and reused. A size above 20k is
  the 20k corpus's shards hard-linked under new names (its samples repeated: start-up and memory
  depend on the count, not on uniqueness);
  - index: the build (data.workers = the largest --workers) and its bytes on disk per sample;
  - start-up: a fresh process per size constructs the loader on the built index
    (data.index=require, data.workers=0): seconds and resident memory (RSS), then the first step;
  - steps: the 20k corpus at an omni-like budget (examples/configs/omni_2b.yaml's model, 64
    samples a step, rows of 8192 tokens, one rank), --steps ``next_step()`` calls in a fresh
    process per data.workers: samples/s and LLM tokens/s, RSS every 50 steps;
- the toy shards (tools/make_toy_data.py): decode + tokenize rate (one process), loader start-up,
  step rate of the padded and the packed loader (decoding included) with their padding;
- a synthetic mix shaped like real omni data, sizes only (no decoding): text of 20..4000 tokens
  (lognormal), half the samples with 1-6 images of 64..1024 patches, a quarter with 1..30 s of
  audio; 64 samples a step per rank, rows of 8192 tokens, 8 and 32 data-parallel ranks. Padding and
  the max/mean estimated cost over ranks, padded (micro-batches of 8 samples, dealt in order)
  against packed and balanced.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from report import cpu_model, slug, write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

from megaomni.config import OmniConfig, load_config
from megaomni.data.balance import contiguous_split, imbalance
from megaomni.data.index import index_root, open_index
from megaomni.data.loader import OmniDataLoader
from megaomni.data.sizes import SampleSizes
from megaomni.data.step_plan import plan_step
from megaomni.data.tokenizer import load_tokenizer
from megaomni.data.workers import Workers
from megaomni.flops import FlopModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from make_synthetic_data import DEFAULT_RANGES, write_synthetic_data  # noqa: E402

SMALL_MEDIA = {"image_side": (28, 112), "video_side": (28, 84), "video_frames": (2, 4), "audio_seconds": (0.5, 3.0)}
PER_SHARD = 250
GENERATED = 20000  # larger corpora: this one's shards, linked
OMNI = [f"data.{k}={v}" for k, v in {"seq_length": 8192, "max_tokens": 8192, "global_batch_size": 64}.items()] + \
    ["model.llm.max_seq_len=8192", "parallel.pp=1"]
RSS_EVERY = 50


def _omni(path: str, *overrides: str) -> OmniConfig:
    return load_config(os.path.join(ROOT, "examples", "configs", "omni_2b.yaml"), [f"data.path={path}", *OMNI,
                                                                                  *overrides])


def _mib(field: str = "VmRSS", pid: str | int = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------- corpora and index


def corpus(root: str, samples: int) -> tuple[str, dict]:
    """The synthetic corpus of ``samples`` under ``root`` (made if missing) and how it was made."""
    path = os.path.join(root, f"synth_{samples}")
    ranges = {k: list(v) for k, v in {**DEFAULT_RANGES, **SMALL_MEDIA}.items()}
    meta_path = os.path.join(path, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["samples"] == samples and meta["ranges"] == ranges:
            return path, meta["made"]
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    if samples <= GENERATED:
        meta = write_synthetic_data(path, samples, seed=0, shards=max(1, samples // PER_SHARD), ranges=SMALL_MEDIA)
        seconds = time.perf_counter() - started
        made = {"how": "generated", "seconds": seconds, "samples_per_s": samples / seconds}
    else:
        if samples % GENERATED:
            raise SystemExit(f"--sizes: {samples} is above {GENERATED} and not a multiple of it")
        base, _ = corpus(root, GENERATED)
        with open(os.path.join(base, "meta.json")) as f:
            meta = json.load(f)
        os.makedirs(path)
        shutil.copy(os.path.join(base, "tokenizer.model"), path)
        for i in range(samples // PER_SHARD):
            source = os.path.join(base, f"synth-{i % meta['shards']:05d}.tar")
            target = os.path.join(path, f"synth-{i:05d}.tar")
            try:
                os.link(source, target)
            except OSError:
                shutil.copy(source, target)
        meta.update(samples=samples, shards=samples // PER_SHARD)
        made = {"how": f"the {GENERATED} corpus's shards hard-linked {samples // GENERATED} times under new names "
                       "(samples repeated)", "seconds": time.perf_counter() - started}
    with open(meta_path, "w") as f:
        json.dump({**meta, "made": made}, f, indent=1)
    return path, made


def build_index(path: str, workers: int) -> dict:
    """Build ``path``'s index afresh (shards already in the page cache when just written)."""
    cfg = _omni(path, f"data.workers={workers}")
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    shutil.rmtree(index_root(path, cfg), ignore_errors=True)
    pool = Workers(tokenizer, cfg)
    started = time.perf_counter()
    index = open_index(path, tokenizer, cfg, pool.map)
    seconds = time.perf_counter() - started
    pool.close()
    files = {name: os.path.getsize(os.path.join(index.folder, name)) for name in os.listdir(index.folder)}
    arrays = sum(size for name, size in files.items() if name.endswith(".npy"))
    return {"samples": len(index), "shards": len(index.shards), "workers": workers, "seconds": seconds,
            "samples_per_s": len(index) / seconds, "bytes": sum(files.values()), "array_bytes": arrays,
            "bytes_per_sample": sum(files.values()) / len(index), "array_bytes_per_sample": arrays / len(index)}


# ----------------------------------------------------------------------------- fresh-process measures


def _child(*args: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], check=True,
                          stdout=subprocess.PIPE, text=True)
    return {**json.loads(done.stdout.splitlines()[-1]), "process_s": time.perf_counter() - started}


def startup(path: str) -> dict:
    """(child) Construct the loader on the built index, then take one step."""
    cfg = _omni(path, "data.index=require", "data.workers=0", "data.prefetch=false")
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    before = _mib()
    started = time.perf_counter()
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    start_s, after = time.perf_counter() - started, _mib()
    started = time.perf_counter()
    loader.next_step()
    return {"samples": len(loader.samples), "start_s": start_s, "rss_before_mib": before, "rss_mib": after,
            "loader_mib": after - before, "first_step_s": time.perf_counter() - started,
            "rss_first_step_mib": _mib(), "peak_rss_mib": _mib("VmHWM")}


def steps(path: str, workers: int, count: int) -> dict:
    """(child) ``count`` steps at data.workers=``workers``: rates and RSS every RSS_EVERY steps."""
    cfg = _omni(path, f"data.workers={workers}")
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    samples = tokens = micro = 0
    trace = []
    started = time.perf_counter()
    for step in range(1, count + 1):
        for batch in loader.next_step():
            samples, micro = samples + batch.num_samples, micro + 1
            tokens += int((batch.tokens != tokenizer.pad_id).sum())
        if step == 1 or step % RSS_EVERY == 0:
            trace.append({"step": step, "rss_mib": round(_mib(), 1),
                          "workers_rss_mib": round(sum(_mib(pid=p.pid) for p in multiprocessing.active_children()), 1)})
    seconds = time.perf_counter() - started
    loader.close()
    return {"workers": workers, "steps": count, "samples": samples, "micro_batches": micro, "seconds": seconds,
            "steps_per_s": count / seconds, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "samples_per_s_per_process": samples / seconds / max(workers, 1), "peak_rss_mib": _mib("VmHWM"),
            "rss": trace}


# ----------------------------------------------------------------------------- toy shards and sizes-only mix


def _toy(data: str, count: int) -> dict:
    rows = {}
    for packing in (False, True):
        cfg = load_config(os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml"),
                          [f"data.path={data}", f"data.packing={str(packing).lower()}"])
        tokenizer = load_tokenizer(cfg.data.tokenizer_path())
        OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1).close()  # builds the index if missing
        started = time.perf_counter()
        loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
        start_s = time.perf_counter() - started
        started = time.perf_counter()
        decoded = sum(1 for _ in loader.samples)
        decode_s = time.perf_counter() - started
        samples = tokens = slots = 0
        started = time.perf_counter()
        for _ in range(count):
            for batch in loader.next_step():
                samples += batch.num_samples
                tokens += int((batch.tokens != tokenizer.pad_id).sum())
                slots += batch.tokens.numel()
        step_s = time.perf_counter() - started
        loader.close()
        rows["packed" if packing else "padded"] = {
            "start_s": start_s, "decode_samples_per_s": decoded / decode_s, "step_samples_per_s": samples / step_s,
            "step_tokens_per_s": tokens / step_s, "padding": 1 - tokens / slots}
    return rows


def _synthetic_sizes(n: int, g: torch.Generator) -> list[SampleSizes]:
    text = torch.empty(n, dtype=torch.float64).log_normal_(math.log(300), 1.0, generator=g).clamp(20, 4000).long()
    samples = []
    for i in range(n):
        r = torch.rand(3, generator=g).tolist()
        count = int(1 + 6 * r[1]) if r[0] < 0.5 else 0
        images = [int(torch.randint(64, 1025, (1,), generator=g)) for _ in range(count)]
        audios = [int(100 * (1 + 29 * r[2]))] if r[0] > 0.75 else []
        length = min(int(text[i]) + sum(rows // 4 for rows in images + audios), 8192)
        samples.append(SampleSizes.of(length, {"vision": images, "audio": audios}))
    return samples


def _synthetic(count: int, step_samples: int, ranks: int) -> dict:
    cfg = OmniConfig()
    cfg.data.seq_length, cfg.data.max_tokens = 8192, 8192
    cfg.model.llm.num_layers, cfg.model.llm.hidden_size, cfg.model.llm.ffn_hidden_size = 28, 1536, 8960
    cfg.model.llm.num_attention_heads, cfg.model.llm.num_query_groups = 12, 2
    flops = FlopModel.from_config(cfg.model)
    g = torch.Generator().manual_seed(0)
    totals = {"padded_padding": 0.0, "packed_padding": 0.0, "padded_imbalance": 0.0,
              "packed_unbalanced_imbalance": 0.0, "packed_balanced_imbalance": 0.0, "plan_s": 0.0}
    micro = 8
    for _ in range(count):
        samples = _synthetic_sizes(step_samples, g)
        lengths = [s.tokens for s in samples]
        totals["padded_padding"] += 1 - sum(lengths) / (max(lengths) * step_samples)
        costs = [s.cost(flops) for s in samples]
        batch_costs = [sum(costs[i:i + micro]) for i in range(0, step_samples, micro)]
        totals["padded_imbalance"] += imbalance([sum(batch_costs[i] for i in mine)
                                                 for mine in contiguous_split(len(batch_costs), ranks)])
        started = time.perf_counter()
        plan = plan_step(samples, cfg.data, flops, ranks=ranks, minimum=1, pad_multiple=8)
        totals["plan_s"] += time.perf_counter() - started
        totals["packed_padding"] += plan.padding
        totals["packed_unbalanced_imbalance"] += plan.imbalance_before
        totals["packed_balanced_imbalance"] += plan.imbalance_after
    return {k: v / count for k, v in totals.items()}


# ----------------------------------------------------------------------------- main


def _versus_old(toy: dict, synthetic: dict, device: str) -> dict:
    """The same measures in the in-memory loader's figures (``loader_<cpu>.json``), where there are."""
    path = os.path.join(ROOT, "benchmarks", "results", f"loader_{slug(device)}.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        old = json.load(f)
    pairs = {f"toy {name} {key}": (old["toy"][name][key], toy[name][key]) for name in toy
             for key in ("decode_samples_per_s", "step_samples_per_s", "padding")}
    pairs.update({f"{name} {key}": (old["synthetic"][name][key], synthetic[name][key]) for name in synthetic
                  for key in ("packed_padding", "packed_balanced_imbalance", "plan_s")})
    return {"file": os.path.relpath(path, ROOT), "old_new": pairs}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", default=os.path.join(ROOT, "data", "loader_bench"),
                        help="where the synthetic corpora are written (and reused)")
    parser.add_argument("--sizes", type=_ints, default=[2000, 20000, 200000])
    parser.add_argument("--steps", type=int, default=500, help="steps of each step measure (toy and corpus)")
    parser.add_argument("--workers", type=_ints, default=[0, 1, 2], help="data.workers values of the step measure")
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "toy"), help="the toy shards ('' : skip)")
    parser.add_argument("--synthetic-steps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        kind, path, *rest = args.child
        print(json.dumps(startup(path) if kind == "startup" else steps(path, *map(int, rest))))
        return

    load = {"start": _load()}
    corpora, index = {}, {}
    for n in args.sizes:
        path, corpora[n] = corpus(args.corpora, n)
        index[n] = build_index(path, max(args.workers))
    load["index"] = _load()
    start = {n: _child("startup", os.path.join(args.corpora, f"synth_{n}")) for n in args.sizes}
    load["startup"] = _load()
    step_corpus = os.path.join(args.corpora, f"synth_{min(args.sizes, key=lambda n: abs(n - GENERATED))}")
    runs = {w: _child("steps", step_corpus, str(w), str(args.steps)) for w in args.workers}
    load["steps"] = _load()
    toy = _toy(args.data, args.steps) if args.data else {}
    synthetic = {f"dp{r}": _synthetic(args.synthetic_steps, 64 * r, r) for r in (8, 32)}
    load["end"] = _load()

    print(f"{'corpus':>8} {'made s':>7} {'index s':>8} {'samples/s':>10} {'index MiB':>10} {'B/sample':>9} "
          f"{'start ms':>9} {'RSS MiB':>8} {'loader MiB':>11} {'1st step s':>11} {'RSS then':>9}")
    for n in args.sizes:
        i, s = index[n], start[n]
        print(f"{n:>8} {corpora[n]['seconds']:>7.1f} {i['seconds']:>8.1f} {i['samples_per_s']:>10.0f} "
              f"{i['bytes'] / 2**20:>10.2f} {i['bytes_per_sample']:>9.1f} {1000 * s['start_s']:>9.1f} "
              f"{s['rss_mib']:>8.0f} {s['loader_mib']:>11.1f} {s['first_step_s']:>11.2f} "
              f"{s['rss_first_step_mib']:>9.0f}")
    print(f"\n{os.path.basename(step_corpus)}, {args.steps} steps of 64 samples, rows of 8192 tokens; "
          f"load {load['startup']} -> {load['steps']}")
    print(f"{'workers':>7} {'steps/s':>8} {'samples/s':>10} {'per proc':>9} {'tokens/s':>9} "
          f"{'RSS MiB by step':>40} {'peak':>6} {'workers RSS':>12}")
    for w, r in runs.items():
        trace = " ".join(f"{t['rss_mib']:.0f}" for t in r["rss"][::2])
        print(f"{w:>7} {r['steps_per_s']:>8.2f} {r['samples_per_s']:>10.0f} {r['samples_per_s_per_process']:>9.0f} "
              f"{r['tokens_per_s']:>9.0f} {trace:>40} {r['peak_rss_mib']:>6.0f} "
              f"{r['rss'][-1]['workers_rss_mib']:>12.0f}")
    if toy:
        print(f"\n{'toy data':10} {'start ms':>9} {'decode samples/s':>17} {'step samples/s':>15} "
              f"{'step tokens/s':>14} {'padding':>8}")
        for name, r in toy.items():
            print(f"{name:10} {1000 * r['start_s']:>9.1f} {r['decode_samples_per_s']:>17.0f} "
                  f"{r['step_samples_per_s']:>15.0f} {r['step_tokens_per_s']:>14.0f} {r['padding']:>8.1%}")
    print(f"\nsynthetic mix, 64 samples/step per rank, rows of 8192 tokens ({args.synthetic_steps} steps)")
    print(f"{'ranks':6} {'padding padded':>15} {'packed':>7} {'imbalance padded':>17} {'packed':>7} "
          f"{'packed+balanced':>16} {'plan ms':>8}")
    for name, r in synthetic.items():
        print(f"{name:6} {r['padded_padding']:>15.1%} {r['packed_padding']:>7.1%} {r['padded_imbalance']:>17.2f} "
              f"{r['packed_unbalanced_imbalance']:>7.2f} {r['packed_balanced_imbalance']:>16.2f} "
              f"{1000 * r['plan_s']:>8.1f}")
    device = cpu_model()
    versus = _versus_old(toy, synthetic, device)
    if versus:
        print(f"\nthe same measures in {versus['file']} (the in-memory loader): old -> now")
        for name, (old, new) in versus["old_new"].items():
            print(f"{name:42} {old:>12.4g} -> {new:<12.4g}")
    write_result({"device": device, "cores": os.cpu_count(), "threads": 1,
                  "versions": {"torch": torch.__version__, "numpy": np.__version__,
                               "python": platform.python_version()},
                  "config": {"sizes": args.sizes, "steps": args.steps, "workers": args.workers,
                             "synthetic_steps": args.synthetic_steps, "corpus_media": SMALL_MEDIA,
                             "samples_per_shard": PER_SHARD, "step_corpus": os.path.basename(step_corpus),
                             "step_config": ["examples/configs/omni_2b.yaml", *OMNI], "rss_every": RSS_EVERY},
                  "load_average": load, "corpora": corpora, "index": index, "startup": start,
                  "steps": runs, "toy": toy, "synthetic": synthetic,
                  "versus_in_memory_loader": versus}, args.out, "loader_streaming", device)


if __name__ == "__main__":
    main()
