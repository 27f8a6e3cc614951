"""The launch scripts in examples/ start real runs (on the CPU here: gloo instead of NCCL).

The SLURM script runs under stand-ins for ``srun`` and ``scontrol`` that act like a one-node
allocation, so its rendezvous and node-rank wiring through train_multi_node.sh runs as written."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY_CONFIG, read_metrics

pytestmark = pytest.mark.slow


def _run(script: str, out, env: dict, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **env}
    cmd = ["bash", os.path.join(ROOT, "examples", script), f"train.output_dir={out}", "train.iters=2",
           "train.warmup_iters=0", "checkpoint.save_interval=0", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [r["iteration"] for r in read_metrics(str(out))] == [1, 2]


def test_one_node_script(toy_data, tmp_path):
    _run("train_one_node.sh", tmp_path / "run", {"GPUS": "2", "TP": "2", "PP": "1", "DATA": toy_data})


def test_one_node_script_joint_schedule(toy_data, tmp_path):
    _run("train_one_node.sh", tmp_path / "run", {"GPUS": "2", "TP": "1", "SP": "false", "PP": "2",
                                                 "SCHEDULE": "joint", "DIST_OPT": "false", "DATA": toy_data})
    with open(tmp_path / "run" / "config.yaml") as f:
        assert "schedule: joint" in f.read()


def _stand_in(directory, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_script_through_multi_node_script(toy_data, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "scontrol", "echo 127.0.0.1")
    # A one-node allocation: the task runs once, as node 0 (srun's own options dropped).
    _stand_in(bin_dir, "srun", 'while [[ $1 == --* ]]; do shift; done; SLURM_NODEID=0 exec "$@"')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node0",
           "SLURM_GPUS_ON_NODE": "2", "MASTER_PORT": "29533", "TP": "1", "SP": "false", "PP": "2", "VPP": "1",
           "CONFIG": TINY_CONFIG}
    _run("train_slurm.sbatch", tmp_path / "run", env, f"data.path={toy_data}")
