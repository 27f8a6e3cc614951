"""Replay recorded steps (``timelines/iter_N.json``, see ``pipeline.timeline_interval``) in the
simulator: fit the rates that turn FLOPs into seconds from what the executor measured (the
profiling pass), then predict a step's time from its plan and micro-batches."""

from __future__ import annotations

import glob
import json
import os

from megaomni.flops import FlopModel
from megaomni.pipeline.costs import Rates, StepCosts, fit_rates, step_costs
from megaomni.pipeline.plan import Plan
from megaomni.pipeline.shares import Item
from megaomni.pipeline.simulate import action_work, simulate
from megaomni.pipeline.timeline import Event, Timeline


def load_records(folder: str) -> list[dict]:
    """Every ``iter_*.json`` of ``folder`` in iteration order, each with its ``path``."""
    records = []
    for path in sorted(glob.glob(os.path.join(folder, "iter_*.json"))):
        with open(path) as f:
            records.append({**json.load(f), "path": path})
    return records


def flop_model(record: dict) -> FlopModel:
    data = dict(record["flop_model"])
    data["layer_params"], data["stage_layers"] = tuple(data["layer_params"]), tuple(data["stage_layers"])
    return FlopModel(**data)


def micro_batches(record: dict) -> list[dict]:
    return [{**mb, "items": [Item(**i) for i in mb["items"]]} for mb in record["micro_batches"]]


def record_costs(record: dict) -> StepCosts:
    return step_costs(flop_model(record), micro_batches(record), record["bytes_per_value"])


def action_samples(plan: Plan, costs: StepCosts, events: list[Event], samples: dict) -> dict:
    """(FLOPs, seconds) per model call of every compute action of one recorded step, per kind,
    added to ``samples`` (see :func:`fit_rates`)."""
    actions = {(r, a.kind, a.micro, a.stage): a for r, rank in enumerate(plan.actions) for a in rank}
    for e in events:
        flops, calls = action_work(plan, e.rank, actions[(e.rank, e.kind, e.micro, e.stage)], costs)
        if calls:
            samples.setdefault(e.kind, []).append((flops / calls, (e.end - e.start) / calls))
    return samples


def measured(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(FLOPs, seconds) of every recorded compute action, per kind."""
    samples: dict[str, list] = {}
    for record in records:
        if record.get("timeline"):
            action_samples(Plan.from_dict(record["plan"]), record_costs(record),
                           Timeline.from_dict(record["timeline"]).events, samples)
    return samples


def fit(records: list[dict], base: Rates = Rates()) -> Rates:
    return fit_rates(measured(records), base)


def predict(record: dict, rates: Rates) -> Timeline:
    """The simulated timeline of a recorded step's plan."""
    return simulate(Plan.from_dict(record["plan"]), record_costs(record), rates)
