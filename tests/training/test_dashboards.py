"""TensorBoard and W&B (megaomni/training/dashboards.py): the fields of metrics.jsonl, per step.

W&B is not installed for the tests: a stand-in module records what the sink calls, injected in
``sys.modules`` in process, and on ``PYTHONPATH`` for a training run (tests/training/fake_wandb).
"""

from __future__ import annotations

import json
import os
import sys
import types

import pytest

from megaomni.config import ConfigError, OmniConfig
from megaomni.training.dashboards import Dashboards, flatten
from megaomni.validation import check_logging
from tests.conftest import read_metrics, run_pretrain

FAKE_WANDB = os.path.join(os.path.dirname(__file__), "fake_wandb")
RECORDS = [
    {"iteration": 1, "loss": 5.5, "grad_norm": 0.25, "tokens": 100, "skipped": {}},
    {"iteration": 2, "loss": 5.0, "grad_norm": 0.5, "tokens": 90, "skipped": {"bad image": 2, "too long": 1},
     "note": "text", "flag": True},
]


def test_every_numeric_field_flattened():
    assert flatten(RECORDS[1]) == {"loss": 5.0, "grad_norm": 0.5, "tokens": 90, "skipped/bad image": 2,
                                   "skipped/too long": 1}


class _FakeRun:
    def __init__(self, calls: list):
        self.calls = calls

    def log(self, values, step):
        self.calls.append(("log", dict(values), step))

    def finish(self):
        self.calls.append(("finish",))


def test_wandb_gets_the_config_and_each_step(monkeypatch, tmp_path):
    calls: list = []
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: calls.append(("init", kwargs)) or _FakeRun(calls)
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    cfg = OmniConfig()
    cfg.logging.wandb_project, cfg.logging.wandb_name, cfg.logging.wandb_mode = "omni", "tiny", "offline"
    dashboards = Dashboards(cfg.logging, cfg.to_dict(), str(tmp_path), enabled=True)
    for record in RECORDS:
        dashboards.write(record)
    dashboards.close()
    assert calls == [
        ("init", {"project": "omni", "name": "tiny", "mode": "offline", "config": cfg.to_dict(), "dir": str(tmp_path)}),
        ("log", {"loss": 5.5, "grad_norm": 0.25, "tokens": 100}, 1),
        ("log", {"loss": 5.0, "grad_norm": 0.5, "tokens": 90, "skipped/bad image": 2, "skipped/too long": 1}, 2),
        ("finish",)]


def test_no_dashboard_off_the_metrics_rank(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail
    cfg = OmniConfig()
    cfg.logging.wandb_project, cfg.logging.tensorboard = "omni", str(tmp_path / "tb")
    dashboards = Dashboards(cfg.logging, {}, str(tmp_path), enabled=False)
    dashboards.write(RECORDS[0])
    dashboards.close()
    assert not os.path.exists(tmp_path / "tb")


def test_a_dashboard_without_its_package_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "wandb" else object())
    cfg = OmniConfig()
    cfg.logging.wandb_project = "omni"
    with pytest.raises(ConfigError) as err:
        check_logging(cfg)
    assert str(err.value) == ("logging.wandb_project=omni: needs the wandb package, not installed: pip install wandb "
                              "(or leave logging.wandb_project empty)")
    cfg.logging.wandb_project, cfg.logging.wandb_mode = "", "offlne"
    with pytest.raises(ConfigError, match="^logging.wandb_mode=offlne: valid: online, offline, disabled$"):
        check_logging(cfg)


def _tensorboard_scalars(log_dir: str) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(log_dir, size_guidance={"scalars": 0})  # 0: keep every step
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_a_run_feeds_both_dashboards_the_fields_of_metrics_jsonl(toy_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (FAKE_WANDB, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("FAKE_WANDB_LOG", str(tmp_path / "wandb.jsonl"))
    out, tb = tmp_path / "run", tmp_path / "tb"
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={out}", "train.iters=3", "train.warmup_iters=1",
                        "checkpoint.save_last=false", f"logging.tensorboard={tb}", "logging.wandb_project=omni",
                        "logging.wandb_mode=offline")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = {r["iteration"]: flatten(r) for r in read_metrics(str(out))}
    assert sorted(expected) == [1, 2, 3] and "loss" in expected[1] and "tokens_per_s" in expected[1]

    # TensorBoard keeps float32: equal within its rounding (relative 1e-7, and 1e-6 of margin).
    scalars = _tensorboard_scalars(str(tb))
    assert set(scalars) == {name for values in expected.values() for name in values}
    for name, by_step in scalars.items():
        assert by_step == pytest.approx({it: values[name] for it, values in expected.items() if name in values},
                                        rel=1e-6, abs=1e-30), name

    with open(tmp_path / "wandb.jsonl") as f:
        calls = [json.loads(line) for line in f]
    assert calls[0]["init"]["project"] == "omni" and calls[0]["init"]["mode"] == "offline"
    assert calls[0]["init"]["config"]["train"]["iters"] == 3
    assert [(c["step"], c["values"]) for c in calls[1:-1]] == sorted(expected.items())  # exact: JSON both ways
    assert calls[-1] == {"finish": True}
