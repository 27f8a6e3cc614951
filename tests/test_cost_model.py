"""The one FLOP model against what the three separate cost models gave before it replaced them.

``cost_model_record.json`` was written by the code before the media layer (commit "Record of the
three cost models"), with ``python -m tests.test_cost_model --record``: for 200 random
configurations and steps, the automatic stage split, the packed step's data-parallel assignment
and the joint plan (a digest of its whole action list). The code now must give the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys

import pytest

from megaomni.config import DataConfig, OmniConfig
from megaomni.parallel.stages import layers_per_stage
from megaomni.pipeline.costs import Rates, step_costs
from megaomni.pipeline.joint_plan import joint_plan
from megaomni.pipeline.llm_order import chunk_run_length
from megaomni.pipeline.plan import ENC_B, ENC_F, LLM_B, LLM_F
from tests.cost_cases import item_list, make_samples, pipeline_flops, plan_dp_step

RECORD = os.path.join(os.path.dirname(__file__), "cost_model_record.json")
CASES = 200


def random_case(seed: int) -> dict:
    """A configuration and one step's sizes, drawn from ``seed`` alone."""
    rng = random.Random(seed)
    heads = rng.choice([2, 4, 8])
    groups = rng.choice([g for g in (1, 2, heads) if heads % g == 0])
    llm = dict(num_layers=rng.randint(4, 24), hidden_size=heads * rng.choice([8, 16, 32]), num_attention_heads=heads,
               num_query_groups=groups, ffn_hidden_size=rng.choice([96, 176, 352]))
    if rng.random() < 0.3:
        llm["moe"] = dict(num_experts=rng.choice([4, 8]), top_k=2, layer_freq=rng.choice([1, 2]),
                          ffn_hidden_size=rng.choice([0, 64]), shared_expert_ffn_hidden_size=rng.choice([0, 32]))
    vision = dict(enabled=rng.random() < 0.8, num_layers=rng.randint(1, 6), hidden_size=rng.choice([32, 64]),
                  ffn_hidden_size=rng.choice([64, 176]))
    audio = dict(enabled=rng.random() < 0.6, num_layers=rng.randint(1, 4), hidden_size=rng.choice([32, 64]),
                 ffn_hidden_size=rng.choice([64, 176]))
    pp = rng.choice([1, 2, 4])
    vpp = rng.choice([1, 2]) if pp > 1 and llm["num_layers"] >= 2 * pp else 1
    samples = []
    for _ in range(rng.randint(16, 32)):  # enough for dp 4 x pp 4 micro-batches
        grids = [(2 * rng.randint(1, 6), 2 * rng.randint(1, 6)) for _ in range(rng.choice([0, 0, 1, 2]))]
        frames = [rng.randint(20, 400) for _ in range(rng.choice([0, 0, 1]))]
        samples.append({"tokens": rng.randint(8, 200), "grids": grids if vision["enabled"] else [],
                        "frames": frames if audio["enabled"] else []})
    return {
        "config": {"model": {"llm": llm, "vision": vision, "audio": audio},
                   "parallel": {"pp": pp, "vpp": vpp},
                   "pipeline": {"schedule": rng.choice(["megatron", "joint"])},
                   "data": {"seq_length": 256, "max_tokens": rng.choice([256, 512]),
                            "max_patches": rng.choice([0, 400]), "max_audio_frames": rng.choice([0, 800])}},
        "vocab": 64 * rng.randint(2, 40),
        "dp": rng.choice([1, 2, 4]),
        "samples": samples,
        "floor": rng.choice([0.0, 1e-9, 1e-7]),
    }


def build_config(tree: dict) -> OmniConfig:
    from megaomni.config import _build
    return _build(OmniConfig, json.loads(json.dumps(tree)), "")


def outcome(case: dict) -> dict:
    cfg = build_config(case["config"])
    vocab = case["vocab"]
    stages = layers_per_stage(cfg, vocab)
    data: DataConfig = cfg.data
    samples = make_samples(case["samples"], cfg)
    step = plan_dp_step(samples, cfg, case["dp"])
    out = {"stages": stages, "packs": step.packs, "ranks": step.ranks, "length": step.length,
           "imbalance": [step.imbalance_before, step.imbalance_after]}
    pp, vpp = cfg.parallel.pp, cfg.parallel.vpp
    if pp > 1:
        described = []
        for pack in step.packs:
            lens = [case["samples"][i]["tokens"] for i in pack]
            described.append({"seq_lens": lens, "tokens": step.length,
                              "items": item_list([case["samples"][i] for i in pack], cfg)})
        flops = pipeline_flops(cfg, stages, vocab)
        costs = step_costs(flops, described, 2)
        kinds = (ENC_F, ENC_B, LLM_F, LLM_B)
        rates = Rates(per_flop={k: 1e-12 for k in kinds}, floor={k: case["floor"] for k in kinds})
        plan = joint_plan(pp, vpp, costs, rates, chunk_run=chunk_run_length(len(step.packs), pp) if vpp > 1 else 0)
        digest = hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()
        out.update(plan=digest, llm=costs.llm, items=costs.items)
    del data
    return out


def test_same_splits_assignments_and_plans():
    with open(RECORD) as f:
        record = json.load(f)
    assert len(record) == CASES
    for seed, expected in enumerate(record):
        got = outcome(random_case(seed))
        for key in ("stages", "packs", "ranks", "length", "plan"):
            assert got.get(key) == expected.get(key), (seed, key)
        assert got["imbalance"] == pytest.approx(expected["imbalance"], rel=1e-12), seed
        for key in ("llm", "items"):
            assert json.dumps(got.get(key)) == json.dumps(expected.get(key)), (seed, key)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    with open(RECORD, "w") as f:
        json.dump([outcome(random_case(seed)) for seed in range(CASES)], f)
