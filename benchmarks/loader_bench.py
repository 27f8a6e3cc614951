"""The input side: how fast the loader turns shards into samples and steps, and how much padding
and rank imbalance packing and balancing remove. Prints a table and writes
``benchmarks/results/loader_<cpu>.json``.

    python benchmarks/loader_bench.py --data data/toy [--steps 200] [--synthetic-steps 50]

Two workloads:
- the toy shards: decode + tokenize rate (samples/s, one process), then step rate of the padded and
  the packed loader (samples/s and tokens/s) with their padding fractions;
- a synthetic mix shaped like real omni data (no decoding): text of 20..4000 tokens (lognormal),
  half the samples with 1-6 images of 64..1024 patches, a quarter with 1..30 s of audio; 64
  samples a step per rank, rows of 8192 tokens, 8 and 32 data-parallel ranks. Padding and the max/mean
  estimated cost over ranks, padded (micro-batches of 8 samples, dealt in order) against packed
  and balanced.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch
from report import cpu_model, write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

from megaomni.config import OmniConfig, load_config
from megaomni.data.balance import contiguous_split, imbalance
from megaomni.data.loader import OmniDataLoader
from megaomni.data.sample import Sample
from megaomni.data.step_plan import plan_step, sample_cost
from megaomni.data.tokenizer import load_tokenizer
from megaomni.flops import FlopModel
from megaomni.media.modality import MediaItem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy(data: str, steps: int) -> dict:
    rows = {}
    for packing in (False, True):
        cfg = load_config(os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml"),
                          [f"data.path={data}", f"data.packing={str(packing).lower()}"])
        tokenizer = load_tokenizer(cfg.data.tokenizer_path())
        started = time.perf_counter()
        loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
        load_s = time.perf_counter() - started
        samples = tokens = slots = 0
        started = time.perf_counter()
        for _ in range(steps):
            for batch in loader.next_step():
                samples += batch.num_samples
                tokens += int((batch.tokens != tokenizer.pad_id).sum())
                slots += batch.tokens.numel()
        step_s = time.perf_counter() - started
        rows["packed" if packing else "padded"] = {
            "decode_samples_per_s": len(loader.samples) / load_s, "step_samples_per_s": samples / step_s,
            "step_tokens_per_s": tokens / step_s, "padding": 1 - tokens / slots}
    return rows


def _synthetic_samples(n: int, g: torch.Generator) -> list[Sample]:
    text = torch.empty(n, dtype=torch.float64).log_normal_(math.log(300), 1.0, generator=g).clamp(20, 4000).long()
    samples = []
    for i in range(n):
        r = torch.rand(3, generator=g).tolist()
        # Only sizes matter here: items without values (as Modality.measure makes them).
        images = [MediaItem((0, 0), int(torch.randint(64, 1025, (1,), generator=g)), 0)
                  for _ in range(int(1 + 6 * r[1]) if r[0] < 0.5 else 0)]
        audios = [MediaItem((0,), int(100 * (1 + 29 * r[2])), 0)] if r[0] > 0.75 else []
        length = int(text[i]) + sum(item.rows // 4 for item in images + audios)
        length = min(length, 8192)
        media = {name: items for name, items in (("vision", images), ("audio", audios)) if items}
        samples.append(Sample(key=str(i), tokens=torch.empty(length, dtype=torch.long), labels=torch.empty(0),
                              loss_mask=torch.empty(0), media=media))
    return samples


def _synthetic(steps: int, step_samples: int, ranks: int) -> dict:
    cfg = OmniConfig()
    cfg.data.seq_length, cfg.data.max_tokens = 8192, 8192
    cfg.model.llm.num_layers, cfg.model.llm.hidden_size, cfg.model.llm.ffn_hidden_size = 28, 1536, 8960
    cfg.model.llm.num_attention_heads, cfg.model.llm.num_query_groups = 12, 2
    flops = FlopModel.from_config(cfg.model)
    g = torch.Generator().manual_seed(0)
    totals = {"padded_padding": 0.0, "packed_padding": 0.0, "padded_imbalance": 0.0,
              "packed_unbalanced_imbalance": 0.0, "packed_balanced_imbalance": 0.0, "plan_s": 0.0}
    for _ in range(steps):
        samples = _synthetic_samples(step_samples, g)
        lengths = [s.tokens.numel() for s in samples]
        micro = 8
        batches = [list(range(i, i + micro)) for i in range(0, step_samples, micro)]
        longest = max(lengths)
        totals["padded_padding"] += 1 - sum(lengths) / (longest * step_samples)
        sample_costs = [sample_cost(s, flops) for s in samples]
        batch_costs = [sum(sample_costs[i] for i in b) for b in batches]
        totals["padded_imbalance"] += imbalance([sum(batch_costs[i] for i in mine)
                                                 for mine in contiguous_split(len(batches), ranks)])
        started = time.perf_counter()
        plan = plan_step(samples, cfg.data, flops, ranks=ranks, minimum=1, pad_multiple=8)
        totals["plan_s"] += time.perf_counter() - started
        totals["packed_padding"] += plan.padding
        totals["packed_unbalanced_imbalance"] += plan.imbalance_before
        totals["packed_balanced_imbalance"] += plan.imbalance_after
    return {k: v / steps for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "toy"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--synthetic-steps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    toy = _toy(args.data, args.steps)
    synthetic = {f"dp{r}": _synthetic(args.synthetic_steps, 64 * r, r) for r in (8, 32)}
    print(f"{'toy data':10} {'decode samples/s':>17} {'step samples/s':>15} {'step tokens/s':>14} {'padding':>8}")
    for name, r in toy.items():
        print(f"{name:10} {r['decode_samples_per_s']:>17.0f} {r['step_samples_per_s']:>15.0f} "
              f"{r['step_tokens_per_s']:>14.0f} {r['padding']:>8.1%}")
    print(f"\nsynthetic mix, 64 samples/step per rank, rows of 8192 tokens ({args.synthetic_steps} steps)")
    print(f"{'ranks':6} {'padding padded':>15} {'packed':>7} {'imbalance padded':>17} {'packed':>7} "
          f"{'packed+balanced':>16} {'plan ms':>8}")
    for name, r in synthetic.items():
        print(f"{name:6} {r['padded_padding']:>15.1%} {r['packed_padding']:>7.1%} {r['padded_imbalance']:>17.2f} "
              f"{r['packed_unbalanced_imbalance']:>7.2f} {r['packed_balanced_imbalance']:>16.2f} "
              f"{1000 * r['plan_s']:>8.1f}")
    device = cpu_model()
    write_result({"device": device, "cores": os.cpu_count(), "threads": 1,
                  "versions": {"torch": torch.__version__, "python": platform.python_version()},
                  "config": {"toy_steps": args.steps, "synthetic_steps": args.synthetic_steps},
                  "toy": toy, "synthetic": synthetic}, args.out, "loader", device)


if __name__ == "__main__":
    main()
