"""Runs never overwrite runs: what refuses a run's directories, what resumes them, and how a
resumed run's metrics.jsonl keeps every line it had."""

from __future__ import annotations

import json
import logging
import os

import pytest

from megaomni.config import ConfigError, OmniConfig
from megaomni.training.metrics import MetricsWriter
from megaomni.training.run_dir import check_run_dirs, earlier_run


def _cfg(out, *, save="", load="", finetune=False) -> OmniConfig:
    cfg = OmniConfig()
    cfg.train.output_dir, cfg.checkpoint.save, cfg.checkpoint.load = str(out), str(save), str(load)
    cfg.checkpoint.finetune = finetune
    return cfg


def _checkpoint(root, iteration: int) -> str:
    path = os.path.join(root, f"iter_{iteration:07d}")
    os.makedirs(path)
    with open(os.path.join(root, "latest"), "w") as f:
        f.write(os.path.basename(path))
    return path


def _metrics(out, *iterations, tail: str = "") -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps({"iteration": i, "loss": 1.0 / i}) + "\n" for i in iterations)
        f.write(tail)


def test_directories_without_an_earlier_run_pass(tmp_path):
    assert earlier_run(_cfg(tmp_path / "new")) is None
    (tmp_path / "crashed" / "checkpoints" / "iter_0000005.tmp").mkdir(parents=True)  # a save never finished
    (tmp_path / "crashed" / "config.yaml").write_text("{}")
    assert earlier_run(_cfg(tmp_path / "crashed")) is None


def test_an_earlier_run_is_refused_naming_the_fixes(tmp_path):
    out = tmp_path / "run"
    _metrics(out, 1, 2)
    assert earlier_run(_cfg(out)) == (f"train.output_dir={out} holds an earlier run (metrics.jsonl)",
                                      "write over it with train.overwrite=true, or set another train.output_dir")
    _checkpoint(out / "checkpoints", 2)
    held, fixes = earlier_run(_cfg(out))
    assert held.endswith("(metrics.jsonl, checkpoints)")
    assert fixes.startswith(f"resume it with checkpoint.load={out / 'checkpoints'}, ")
    # A checkpoint root of its own, holding checkpoints: named as checkpoint.save.
    _checkpoint(tmp_path / "ckpt", 3)
    held, fixes = earlier_run(_cfg(tmp_path / "fresh", save=tmp_path / "ckpt"))
    assert held == f"checkpoint.save={tmp_path / 'ckpt'} holds an earlier run (checkpoints)"
    assert fixes.endswith("or set another checkpoint.save")


def test_resuming_from_its_own_checkpoint_passes(tmp_path):
    out = tmp_path / "run"
    _metrics(out, 1, 2, 3)
    path = _checkpoint(out / "checkpoints", 3)
    assert earlier_run(_cfg(out, load=path)) is None
    assert earlier_run(_cfg(out, load=out / "checkpoints")) is None
    _checkpoint(tmp_path / "ckpt", 3)
    assert earlier_run(_cfg(tmp_path / "out2", save=tmp_path / "ckpt", load=tmp_path / "ckpt")) is None
    # Weights alone start a new run (iteration 0): not a resume.
    assert earlier_run(_cfg(out, load=path, finetune=True)) is not None
    # Loading another run's checkpoint does not make this directory's run resumable.
    assert earlier_run(_cfg(out, load=_checkpoint(tmp_path / "other", 1))) is not None


def test_every_rank_raises_the_one_line(megatron_cpu, tmp_path, caplog):
    cfg = _cfg(tmp_path / "run")
    _metrics(cfg.train.output_dir, 1)
    with pytest.raises(ConfigError, match=r"^train.output_dir=.* holds an earlier run \(metrics.jsonl\): write over"):
        check_run_dirs(cfg)
    cfg.train.overwrite = True
    with caplog.at_level(logging.WARNING, logger="megaomni.train"):
        check_run_dirs(cfg)
    assert [r.getMessage() for r in caplog.records] == [
        f"train.output_dir={tmp_path / 'run'} holds an earlier run (metrics.jsonl): writing over it "
        "(train.overwrite=true)"]


def _lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_a_resumed_run_appends_and_keeps_the_lines_past_its_checkpoint(tmp_path):
    # Iterations 1-5 logged, the last checkpoint at 3, then a crash in the middle of a line.
    _metrics(tmp_path, 1, 2, 3, 4, 5, tail='{"iteration": 6, "lo')
    writer = MetricsWriter(str(tmp_path), 6, 1, enabled=True, resume_from=3)
    writer.write({"iteration": 4, "loss": 0.5, "grad_norm": 1.0, "lr": 1e-3, "tokens": 1, "tokens_per_s": 1.0,
                  "step_time_s": 1.0})
    writer.close()
    assert [r["iteration"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    (aside,) = [name for name in os.listdir(tmp_path) if name.startswith("metrics.replaced-")]
    with open(tmp_path / aside) as f:
        moved = f.read().splitlines()
    assert [json.loads(line)["iteration"] for line in moved[:2]] == [4, 5]
    assert moved[2] == '{"iteration": 6, "lo'
    # Nothing past the resume point: the file is appended as it is, nothing moved.
    MetricsWriter(str(tmp_path), 6, 1, enabled=True, resume_from=4).close()
    assert [r["iteration"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert len([name for name in os.listdir(tmp_path) if name.startswith("metrics.replaced-")]) == 1
