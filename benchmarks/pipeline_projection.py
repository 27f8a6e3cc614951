"""SIMULATED projection of both pipeline policies from 8 to 1024 GPUs, on the workload
distribution of a measured run. Nothing here runs a model: every number comes from megaomni's
pipeline simulator (megaomni/pipeline/simulate.py), priced by a FLOP model and rates.

    python benchmarks/pipeline_projection.py --timelines runs/omni_2b/timelines [DIR ...]
        [--config examples/configs/omni_2b.yaml] [KEY=VALUE ...] [--rates rates.json]
        [--link-gbps 200] [--layouts 8/1/2 16/1/2 ...] [--micro auto] [--steps 2] [--seed 0]
        [--max-replicas 64] [--workers N] [--name NAME]
        [--markdown FILE] [--out benchmarks/results]

Policies (the same two the trainer runs, ``pipeline.schedule``):
  megatron  encoders on pipeline stage 0, megatron-core's 1F1B (or interleaved) LLM order; the
            automatic layer split gives stage 0 fewer LLM layers (it also runs the encoders)
  joint     each pipeline rank encodes a share of every micro-batch in the LLM order's bubbles
            (megaomni/pipeline/joint_plan.py); LLM layers split evenly

Workload: ``--timelines`` folders of ``iter_*.json`` written by a training run
(``pipeline.timeline_interval``). Their ``micro_batches`` (packed rows: sample lengths, row length,
media items) form a pool; every simulated pipeline replica of every simulated step draws its M
micro-batches from the pool uniformly with replacement, seeded by (seed, step, replica), so both
policies price identical micro-batches and replica r's draw does not depend on dp.

Model: ``FlopModel.from_config`` of ``--config`` (+ KEY=VALUE overrides), split into stages by
``megaomni.parallel.stages.layers_per_stage`` for each pp and policy (a configured
``pipeline.layers_per_stage`` is dropped: it was written for one pp), the split the trainer runs:
the largest stage as small as possible and the others as even as possible. The vocabulary:
``--vocab``, else ``model.llm.vocab_size`` (padded to 64), else the one the timelines recorded,
else the tokenizer's.

Layouts (``--layouts GPUS/TP/PP ...``; default below): tp=1 throughout (a 2B model needs no tensor
parallelism; with tp > 1 compute time is divided by tp, i.e. ideal TP efficiency is assumed, and
the bytes a rank sends to the next stage are not: no sequence parallelism), pp grows with the GPU
count, dp = GPUs / (tp * pp):

    GPUs   8  16  32  64  128  256  512  1024
    pp     2   2   4   4    8    8   16    16
    dp     4   8   8  16   16   32   32    64

M, micro-batches per pipeline replica per step (``--micro``): ``auto`` = max(8, 2 * pp), i.e.
8, 8, 8, 8, 16, 16, 32, 32: weak scaling (the global batch grows with dp), and M >= 2 pp keeps
1F1B's warm-up and cool-down to at most (pp-1)/(M+pp-1) < 1/3 of an LLM-only step; or a fixed
number >= pp (``GPUS/TP/PP/M`` sets it per layout).

Step time: every data-parallel replica runs its own micro-batches; replicas wait for each other at
the gradient all-reduce, so a step takes the slowest replica's pipeline time (max over replicas).
Figures are means over ``--steps`` (default 2) seeded steps. At most ``--max-replicas`` (default 64,
so every default layout simulates all of its dp replicas) replicas are simulated per layout and
step; above the cap the max is over fewer draws and understates the slowest replica (the table
marks such rows "sim."). Runtime: the joint planner plans and simulates 4 candidate schedules per
replica and step, about 2 s at pp=16, M=32 on one core (its ``wake_time`` scan dominates), so the
pp=16 layouts cost 64 replicas x 2 steps x ~2 s. Layouts that differ in dp only share their
first replicas' simulations (replica r's draw does not depend on dp), and tasks run on
``--workers`` forked processes (default: all cores): the default projection took 108 s on 2
idle cores for an omni_2b-like workload of ~3 media items per micro-batch (longer with more items
or on a loaded machine); ``--steps 1`` or ``--max-replicas 16`` for a quicker look.

Reported per layout and policy: the pipeline step time (compute and stage-to-stage transfers,
max over replicas; NOT including the gradient all-reduce), throughput (LLM tokens, padding
included, over all GPUs per second of that step time), the bubble (idle rank-time within each
replica's own step, mean over replicas; the wait for slower replicas is reported separately as
``bubble_with_dp_wait``), joint/megatron speedup. Separately, a ring all-reduce estimate of the
gradient (fp32 grads, as megaomni's DDP config reduces them, not overlapped with compute, as
megaomni runs it): ``2 (n-1)/n * bytes / link + 2 (n-1) * latency`` per rank, the largest rank
counted. LLM layers are counted on their stage's rank, the embedding on stage 0 and the output
layer on the last stage; encoders on rank 0 (megatron) or on every pipeline rank (joint: encoder
grads reduce over dp * pp ranks). Parameters are the FLOP model's matmul parameters (norms and
biases left out; MoE: active experts only, an underestimate).

Rates: ``--rates FILE`` (JSON ``{"per_flop": {kind: s}, "floor": {kind: s}, "bytes_per_s": ..,
"latency": ..}``, e.g. fitted on a measured run), else ``megaomni.pipeline.costs.Rates()``
(400 TFLOP/s per GPU for every compute kind, 20 us per action). Every pipeline hop and the
all-reduce ring use one link of ``--link-gbps`` gigaBITS per second per GPU (default 200 Gbit/s
= 25 GB/s, a realistic inter-node InfiniBand/RoCE share per GPU). With megatron-core's default
rank order pipeline neighbours are tp * dp ranks apart, so on different 8-GPU nodes in every
default layout but the first (8 GPUs: pp2 x dp4 fits a node, and its hops would be NVLink); the
all-reduce ring is priced on the same link: conservative where it stays in a node.
``--link-gbps 0`` keeps the rates' own ``bytes_per_s``.

Prints a Markdown table titled SIMULATED and writes
``benchmarks/results/pipeline_projection_<name>.json`` (``--name``; default: the rates file's
``device`` or stem, or ``default-rates``) with every input: timeline folders, pool size, rates,
config, layouts, seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from report import cpu_model, write_result  # noqa: E402  (benchmarks/report.py)

from megaomni.config import OmniConfig, load_config  # noqa: E402
from megaomni.flops import FlopModel  # noqa: E402
from megaomni.models.build import padded_vocab_size  # noqa: E402
from megaomni.parallel.stages import layers_per_stage  # noqa: E402
from megaomni.pipeline.costs import Rates, step_costs  # noqa: E402
from megaomni.pipeline.joint_plan import joint_plan  # noqa: E402
from megaomni.pipeline.llm_order import chunk_run_length  # noqa: E402
from megaomni.pipeline.megatron_plan import megatron_plan  # noqa: E402
from megaomni.pipeline.replay import load_records, micro_batches  # noqa: E402
from megaomni.pipeline.simulate import simulate  # noqa: E402

POLICIES = ("megatron", "joint")
DEFAULT_LAYOUTS = ("8/1/2", "16/1/2", "32/1/4", "64/1/4", "128/1/8", "256/1/8", "512/1/16", "1024/1/16")
DEFAULT_LINK_GBPS = 200.0  # Gbit/s per GPU = 25 GB/s
GRAD_BYTES = 4  # megaomni's DDP reduces gradients in fp32 (training/setup.py)


@dataclass(frozen=True)
class Layout:
    gpus: int
    tp: int
    pp: int
    micro: int  # M: micro-batches per pipeline replica per step
    vpp: int = 1

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)

    @property
    def name(self) -> str:
        return f"{self.gpus} GPUs tp{self.tp} pp{self.pp}" + (f" vpp{self.vpp}" if self.vpp > 1 else "")


def micro_for(pp: int, rule: str) -> int:
    return max(8, 2 * pp) if rule == "auto" else int(rule)


def parse_layouts(specs, rule: str, vpp: int = 1) -> list[Layout]:
    """``GPUS/TP/PP`` strings (or ``GPUS/TP/PP/M``) -> layouts, checked."""
    layouts = []
    for spec in specs:
        parts = [int(p) for p in spec.split("/")]
        if len(parts) not in (3, 4):
            raise ValueError(f"layout {spec!r}: expected GPUS/TP/PP or GPUS/TP/PP/M")
        gpus, tp, pp = parts[:3]
        micro = parts[3] if len(parts) == 4 else micro_for(pp, rule)
        if gpus % (tp * pp):
            raise ValueError(f"layout {spec!r}: {gpus} GPUs is not a multiple of tp * pp = {tp * pp}")
        if micro < pp:
            raise ValueError(f"layout {spec!r}: M={micro} micro-batches < pp={pp}")
        layouts.append(Layout(gpus, tp, pp, micro, vpp))
    return layouts


# ----------------------------------------------------------------------------- inputs


def load_pool(folders) -> tuple[list[dict], list[dict]]:
    """Every recorded micro-batch (items as :class:`Item`) of every ``iter_*.json``, and a short
    summary of each record (iteration, schedule, pp, flop model)."""
    pool, records = [], []
    for folder in folders:
        loaded = load_records(folder)
        if not loaded:
            raise SystemExit(f"--timelines {folder}: no iter_*.json (train with pipeline.timeline_interval=N)")
        for record in loaded:
            pool += micro_batches(record)
            records.append({"path": record["path"], "iteration": record.get("iteration"),
                            "schedule": record.get("schedule"), "pp": record.get("pp"),
                            "micro_batches": len(record["micro_batches"]),
                            "flop_model": record.get("flop_model"),
                            "bytes_per_value": record.get("bytes_per_value")})
    if not pool:
        raise SystemExit("the timelines hold no micro-batches")
    return pool, records


def pool_summary(pool: list[dict]) -> dict:
    items = [it for mb in pool for it in mb["items"]]
    by_modality: dict[str, dict] = {}
    for it in items:
        entry = by_modality.setdefault(it.modality, {"items": 0, "inputs": 0, "outputs": 0})
        entry["items"] += 1
        entry["inputs"] += it.size
        entry["outputs"] += it.outputs
    n = len(pool)
    return {"micro_batches": n, "mean_tokens": sum(mb["tokens"] for mb in pool) / n,
            "mean_samples": sum(len(mb["seq_lens"]) for mb in pool) / n,
            "mean_items": len(items) / n,
            "per_micro_batch": {k: {f: v / n for f, v in e.items()} for k, e in by_modality.items()}}


def load_rates(path: str | None, link_gbps: float) -> Rates:
    """``path``'s rates (or the defaults), the link replaced by ``link_gbps`` Gbit/s unless 0."""
    if path:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data.get("rates"), dict):
            data = data["rates"]
        base = Rates()
        rates = Rates(per_flop={**base.per_flop, **data.get("per_flop", {})},
                      floor={**base.floor, **data.get("floor", {})},
                      bytes_per_s=float(data.get("bytes_per_s", base.bytes_per_s)),
                      latency=float(data.get("latency", base.latency)))
    else:
        rates = Rates()
    if link_gbps > 0:
        rates = Rates(dict(rates.per_flop), dict(rates.floor), link_gbps * 1e9 / 8, rates.latency)
    return rates


def with_tp(rates: Rates, tp: int) -> Rates:
    """Ideal tensor parallelism: every compute action runs ``tp`` times faster; transfers don't."""
    if tp == 1:
        return rates
    return Rates({k: v / tp for k, v in rates.per_flop.items()}, dict(rates.floor), rates.bytes_per_s, rates.latency)


def resolve_vocab(cfg: OmniConfig, given: int, records: list[dict]) -> tuple[int, str]:
    if given:
        return given, "--vocab"
    if cfg.model.llm.vocab_size:
        return padded_vocab_size(0, cfg.model.llm.vocab_size), "model.llm.vocab_size"
    for record in records:
        if record.get("flop_model") and record["flop_model"].get("vocab"):
            return int(record["flop_model"]["vocab"]), "the timelines' flop_model"
    try:
        from megaomni.data.tokenizer import load_tokenizer

        return padded_vocab_size(load_tokenizer(cfg.data.tokenizer_path()).vocab_size, 0), "the tokenizer"
    except Exception as err:  # noqa: BLE001
        raise SystemExit(f"no vocabulary size: pass --vocab ({err})")


def policy_config(cfg: OmniConfig, policy: str, pp: int, vpp: int) -> OmniConfig:
    cfg = copy.deepcopy(cfg)
    cfg.pipeline.schedule = policy
    cfg.pipeline.layers_per_stage = []
    cfg.parallel.pp, cfg.parallel.vpp = pp, vpp
    return cfg


def flop_models(cfg: OmniConfig, pp: int, vpp: int, vocab: int) -> dict[str, FlopModel]:
    """Each policy's FLOP model with its automatic layer split for ``pp`` x ``vpp`` stages."""
    models = {}
    for policy in POLICIES:
        run = policy_config(cfg, policy, pp, vpp)
        models[policy] = FlopModel.from_config(run.model, vocab, layers_per_stage(run, vocab))
    return models


def check_against_records(cfg: OmniConfig, vocab: int, records: list[dict]) -> list[str]:
    """A warning if the timelines' FLOP model (the recorded run's model) differs from ``cfg``'s."""
    model = FlopModel.from_config(cfg.model, vocab)
    mine = {"layer_params": list(model.layer_params), "hidden": model.hidden, "encoder_params": model.encoder_params}
    for record in records:
        theirs = record.get("flop_model")
        if not theirs:
            continue
        for key, value in mine.items():
            recorded = list(theirs[key]) if key == "layer_params" else theirs[key]
            if recorded != value:
                return [f"{record['path']}: the recorded run's FLOP model ({key}) differs from --config's: "
                        "projecting --config's model on the recorded micro-batches"]
    return []


# ----------------------------------------------------------------------------- gradient all-reduce


def rank_params(cfg: OmniConfig, model: FlopModel, pp: int, policy: str) -> list[tuple[float, float]]:
    """(LLM parameters, encoder parameters) of each pipeline rank (matmul parameters)."""
    llm, enc = [0.0] * pp, [0.0] * pp
    layer = 0
    for stage, count in enumerate(model.stage_layers):
        llm[stage % pp] += sum(model.layer_params[layer:layer + count])
        layer += count
    llm[0] += model.vocab * model.hidden  # embedding
    llm[(len(model.stage_layers) - 1) % pp] += model.vocab * model.hidden  # output layer
    encoders = model.encoder_params_per_row()
    for rank in range(pp):
        if policy == "joint" or rank == 0:
            enc[rank] = encoders
    return list(zip(llm, enc))


def ring_seconds(values: float, ranks: int, rates: Rates) -> float:
    if ranks <= 1 or values <= 0:
        return 0.0
    return 2 * (ranks - 1) / ranks * values * GRAD_BYTES / rates.bytes_per_s + 2 * (ranks - 1) * rates.latency


def allreduce_seconds(params: list[tuple[float, float]], layout: Layout, policy: str, rates: Rates) -> float:
    """The slowest rank's ring all-reduce of its gradients (TP shards divide them by tp)."""
    enc_ranks = layout.dp * layout.pp if policy == "joint" else layout.dp
    return max(ring_seconds(llm / layout.tp, layout.dp, rates) + ring_seconds(enc / layout.tp, enc_ranks, rates)
               for llm, enc in params)


# ----------------------------------------------------------------------------- simulation


def sample_replica(pool: list[dict], micro: int, seed: int, step: int, replica: int) -> list[dict]:
    """Replica ``replica``'s micro-batches of step ``step``: independent of dp and of the policy."""
    rng = random.Random(f"pipeline-projection/{seed}/{step}/{replica}")
    return [pool[rng.randrange(len(pool))] for _ in range(micro)]


def simulate_replica(policy: str, model: FlopModel, micro_batches: list[dict], pp: int, vpp: int,
                     rates: Rates, bytes_per_value: int) -> dict:
    """One replica's step under ``policy``: the plan the trainer would run, priced by the simulator."""
    chunk_run = chunk_run_length(len(micro_batches), pp) if vpp > 1 else 0
    costs = step_costs(model, micro_batches, bytes_per_value)
    if policy == "joint":
        plan = joint_plan(pp, vpp, costs, rates, chunk_run)
    else:
        plan = megatron_plan(pp, vpp, [len(mb["items"]) for mb in micro_batches], chunk_run)
    timeline = simulate(plan, costs, rates)
    return {"step_time_s": timeline.step_time, "bubble": timeline.bubble, "busy_s": sum(timeline.busy()),
            "tokens": sum(mb["tokens"] for mb in micro_batches)}


def _task(args):
    key, policy, model, mbs, pp, vpp, rates, bytes_per_value = args
    return key, simulate_replica(policy, model, mbs, pp, vpp, rates, bytes_per_value)


def run_tasks(tasks: list[tuple], workers: int) -> dict:
    """``{key: result}`` of every task, costliest first (on ``workers`` forked processes)."""
    tasks = sorted(tasks, key=lambda t: -(t[4] * len(t[3]) * (8 if t[1] == "joint" else 1)))
    if workers <= 1 or len(tasks) <= 1:
        return dict(map(_task, tasks))
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        return dict(pool.imap_unordered(_task, tasks, chunksize=1))


def _key(layout: Layout, policy: str, step: int, replica: int) -> tuple:
    return (layout.pp, layout.vpp, layout.tp, layout.micro, policy, step, replica)


def project(pool: list[dict], layouts: list[Layout], cfg: OmniConfig, vocab: int, rates: Rates, *,
            bytes_per_value: int = 2, steps: int = 2, seed: int = 0, max_replicas: int = 64,
            workers: int = 1) -> list[dict]:
    """The projection's core: every layout under both policies, one row of figures per layout."""
    # A replica's step depends on (pp, vpp, tp, M, policy, step, replica) only, so layouts that
    # differ in dp alone share their first replicas' simulations.
    tasks, models, params = {}, {}, {}
    for li, layout in enumerate(layouts):
        models[li] = flop_models(cfg, layout.pp, layout.vpp, vocab)
        params[li] = {p: rank_params(cfg, models[li][p], layout.pp, p) for p in POLICIES}
        for step in range(steps):
            for replica in range(min(layout.dp, max_replicas)):
                mbs = sample_replica(pool, layout.micro, seed, step, replica)
                for policy in POLICIES:
                    key = _key(layout, policy, step, replica)
                    tasks.setdefault(key, (key, policy, models[li][policy], mbs, layout.pp, layout.vpp,
                                           with_tp(rates, layout.tp), bytes_per_value))
    results = run_tasks(list(tasks.values()), workers)

    rows = []
    for li, layout in enumerate(layouts):
        replicas = min(layout.dp, max_replicas)
        row = {**asdict(layout), "dp": layout.dp, "simulated_replicas": replicas, "steps": steps}
        for policy in POLICIES:
            per_step = []
            for step in range(steps):
                runs = [results[_key(layout, policy, step, r)] for r in range(replicas)]
                step_time = max(r["step_time_s"] for r in runs)
                tokens = layout.dp * sum(r["tokens"] for r in runs) / replicas  # all dp replicas
                per_step.append({
                    "step_time_s": step_time,
                    "replica_step_times_s": [r["step_time_s"] for r in runs],
                    "bubble": sum(r["bubble"] for r in runs) / replicas,
                    "bubble_with_dp_wait": 1 - sum(r["busy_s"] for r in runs) / (replicas * layout.pp * step_time),
                    "tokens": tokens,
                })
            total_time = sum(s["step_time_s"] for s in per_step)
            allreduce = allreduce_seconds(params[li][policy], layout, policy, with_tp(rates, layout.tp))
            row[policy] = {
                "step_time_s": total_time / steps,
                "tokens_per_s": sum(s["tokens"] for s in per_step) / total_time,
                "tokens_per_s_per_gpu": sum(s["tokens"] for s in per_step) / total_time / layout.gpus,
                "bubble": sum(s["bubble"] for s in per_step) / steps,
                "bubble_with_dp_wait": sum(s["bubble_with_dp_wait"] for s in per_step) / steps,
                "mean_replica_step_time_s": sum(sum(s["replica_step_times_s"]) / replicas for s in per_step) / steps,
                "grad_allreduce_s": allreduce,
                "step_time_with_allreduce_s": total_time / steps + allreduce,
                "stage_layers": list(models[li][policy].stage_layers),
                "rank_params": [{"llm": a, "encoders": b} for a, b in params[li][policy]],
                "steps": per_step,
            }
        row["speedup"] = row["megatron"]["step_time_s"] / row["joint"]["step_time_s"]
        row["speedup_with_allreduce"] = (row["megatron"]["step_time_with_allreduce_s"]
                                         / row["joint"]["step_time_with_allreduce_s"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}"


def table(rows: list[dict], title: str) -> str:
    head = ("| GPUs | tp | pp | dp | M | megatron step ms | joint step ms | speedup | megatron bubble "
            "| joint bubble | megatron Mtok/s | joint Mtok/s | grad all-reduce ms (meg / joint) "
            "| speedup with all-reduce |")
    lines = [f"### {title}", "", head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        m, j = r["megatron"], r["joint"]
        dp = f"{r['dp']}" + (f" ({r['simulated_replicas']} sim.)" if r["simulated_replicas"] < r["dp"] else "")
        lines.append(
            f"| {r['gpus']} | {r['tp']} | {r['pp']} | {dp} | {r['micro']} | {_ms(m['step_time_s'])} "
            f"| {_ms(j['step_time_s'])} | {r['speedup']:.2f}x | {m['bubble']:.1%} | {j['bubble']:.1%} "
            f"| {m['tokens_per_s'] / 1e6:.3g} | {j['tokens_per_s'] / 1e6:.3g} "
            f"| {_ms(m['grad_allreduce_s'])} / {_ms(j['grad_allreduce_s'])} "
            f"| {r['speedup_with_allreduce']:.2f}x |")
    return "\n".join(lines)


def notes(args, rates: Rates, vocab: int, vocab_from: str, pool_info: dict) -> str:
    link = rates.bytes_per_s
    return "\n".join([
        "",
        "SIMULATED, not measured: megaomni's pipeline simulator on the FLOP model of "
        f"`{args.config}`{''.join(' ' + o for o in args.overrides)} (vocab {vocab}, from {vocab_from}), "
        f"micro-batches drawn from {pool_info['micro_batches']} recorded ones "
        f"({', '.join(args.timelines)}; mean {pool_info['mean_tokens']:.0f} tokens, "
        f"{pool_info['mean_items']:.1f} media items each).",
        f"Rates: {args.rates or 'Rates() defaults'}; LLM forward {1 / rates.per_flop['llm_f'] / 1e12:.0f} TFLOP/s, "
        f"encoder forward {1 / rates.per_flop['enc_f'] / 1e12:.0f} TFLOP/s; link {link / 1e9:.1f} GB/s "
        f"({link * 8 / 1e9:.0f} Gbit/s) per GPU for every pipeline hop and the all-reduce, latency "
        f"{rates.latency * 1e6:.0f} us.",
        "Step ms: pipeline step (compute + stage transfers), slowest of the dp replicas, mean of "
        f"{args.steps} steps (seed {args.seed}); tp > 1 assumes ideal TP. Bubble: idle rank-time within each "
        "replica's step. Mtok/s: LLM tokens (padded rows) over all GPUs per second of pipeline step. "
        "Grad all-reduce: fp32 ring estimate of the largest rank's gradients, not overlapped, NOT in step ms; "
        "'speedup with all-reduce' adds it to both. 'sim.': fewer replicas simulated than dp.",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timelines", nargs="+", required=True, metavar="DIR")
    parser.add_argument("--config", default=os.path.relpath(os.path.join(ROOT, "examples", "configs", "omni_2b.yaml")))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.llm.num_layers=8")
    parser.add_argument("--rates", help="JSON of fitted rates (per_flop, floor, bytes_per_s, latency)")
    parser.add_argument("--link-gbps", type=float, default=DEFAULT_LINK_GBPS,
                        help="per-GPU link in gigaBITS/s for pipeline hops and all-reduce "
                             f"(default {DEFAULT_LINK_GBPS:.0f} = 25 GB/s); 0: keep the rates' bytes_per_s")
    parser.add_argument("--layouts", nargs="+", default=list(DEFAULT_LAYOUTS), metavar="GPUS/TP/PP[/M]")
    parser.add_argument("--micro", default="auto", help="M per pipeline replica: auto = max(8, 2 pp), or a number")
    parser.add_argument("--vpp", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-replicas", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--name", help="result file suffix (default: the rates' device or file stem)")
    parser.add_argument("--markdown", help="also write the table (and notes) to this file")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)
    # ``--timelines A B KEY=VALUE``: argparse hands the overrides to --timelines.
    args.overrides += [t for t in args.timelines if "=" in t and not os.path.isdir(t)]
    args.timelines = [t for t in args.timelines if not ("=" in t and not os.path.isdir(t))]

    started = time.perf_counter()
    cfg = load_config(args.config, args.overrides)
    bytes_per_value = 2 if cfg.train.bf16 else 4
    pool, records = load_pool(args.timelines)
    vocab, vocab_from = resolve_vocab(cfg, args.vocab, records)
    for warning in check_against_records(cfg, vocab, records):
        print(f"warning: {warning}")
    rates = load_rates(args.rates, args.link_gbps)
    layouts = parse_layouts(args.layouts, args.micro, args.vpp)
    too_deep = [lay for lay in layouts if lay.pp * lay.vpp > cfg.model.llm.num_layers]
    for lay in too_deep:
        print(f"skipping {lay.name}: {lay.pp * lay.vpp} stages > {cfg.model.llm.num_layers} LLM layers")
    layouts = [lay for lay in layouts if lay not in too_deep]
    info = pool_summary(pool)
    print(f"SIMULATED projection: {len(layouts)} layouts x {len(POLICIES)} policies, {args.steps} steps, "
          f"<= {args.max_replicas} replicas each, pool of {info['micro_batches']} micro-batches, "
          f"{args.workers} workers", flush=True)

    rows = project(pool, layouts, cfg, vocab, rates, bytes_per_value=bytes_per_value, steps=args.steps,
                   seed=args.seed, max_replicas=args.max_replicas, workers=args.workers)
    elapsed = time.perf_counter() - started
    title = (f"SIMULATED pipeline projection ({os.path.basename(args.config)}"
             f"{f', vpp {args.vpp}' if args.vpp > 1 else ''}, megatron vs joint policy, "
             "simulator output, not measured)")
    text = table(rows, title) + "\n" + notes(args, rates, vocab, vocab_from, info) + "\n"
    print(text)
    print(f"projection took {elapsed:.1f} s (after imports) on {args.workers} workers")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
        print(f"wrote {args.markdown}")

    name = args.name
    if not name and args.rates:
        with open(args.rates) as f:
            data = json.load(f)
        name = data.get("device") if isinstance(data.get("device"), str) else None
        name = name or os.path.splitext(os.path.basename(args.rates))[0]
    result = {
        "benchmark": "pipeline_projection",
        "simulated": True,
        "note": "SIMULATED by megaomni/pipeline/simulate.py on a FLOP model and rates; not a measurement",
        "device": "simulator",
        "ran_on": f"{cpu_model()} ({os.cpu_count()} cores)",
        "versions": {"python": platform.python_version()},
        "inputs": {
            "timelines": [os.path.abspath(d) for d in args.timelines],
            "records": [{k: v for k, v in r.items() if k != "flop_model"} for r in records],
            "pool": info,
            "config": args.config, "overrides": list(args.overrides), "vocab": vocab, "vocab_from": vocab_from,
            "bytes_per_value": bytes_per_value,
            "rates_file": args.rates, "link_gbps": args.link_gbps,
            "rates": {"per_flop": rates.per_flop, "floor": rates.floor, "bytes_per_s": rates.bytes_per_s,
                      "latency": rates.latency},
            "layouts": [asdict(lay) for lay in layouts], "micro_rule": args.micro,
            "steps": args.steps, "seed": args.seed, "max_replicas": args.max_replicas,
            "grad_allreduce": f"ring, fp32 ({GRAD_BYTES} bytes) gradients, not overlapped; not in step_time_s",
            "tensor_parallel": "ideal: compute / tp, transfers unchanged",
        },
        "elapsed_s": elapsed,
        "workers": args.workers,
        "rows": rows,
        "table_markdown": text,
    }
    write_result(result, args.out, "pipeline_projection", name or "default-rates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
