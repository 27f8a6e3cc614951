"""The launch scripts run the project's virtual environment (.venv/bin/python) where it exists,
so they work right after `make train`; python3 without one; $PYTHON when given
(examples/python.sh, which each sources)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPTS = {"train_tiny_single_gpu.sh": {}, "train_one_node.sh": {},
           "train_multi_node.sh": {"NNODES": "1", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "CONFIG": "c.yaml"}}


def checkout(tmp_path, venv: bool) -> str:
    """The examples folder in a fresh folder, with a stand-in .venv/bin/python that records how it was called."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "examples"), repo / "examples", ignore=shutil.ignore_patterns("configs", "hf"))
    (repo / "data" / "toy").mkdir(parents=True)
    (repo / "data" / "toy" / "tokenizer.model").write_text("")  # no toy data to make
    if venv:
        (repo / ".venv" / "bin").mkdir(parents=True)
        python = repo / ".venv" / "bin" / "python"
        python.write_text('#!/usr/bin/env bash\necho "venv $*" > "$(dirname "$0")/called"\n')
        python.chmod(0o755)
    return str(repo)


def chosen(repo: str, env: dict) -> str:
    script = 'set -euo pipefail; . examples/python.sh; echo "$PYTHON"'
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | env
    return subprocess.run(["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_python_chosen(tmp_path):
    bare = checkout(tmp_path / "bare", venv=False)
    assert chosen(bare, {}) == "python3"
    made = checkout(tmp_path / "made", venv=True)
    assert chosen(made, {}) == os.path.join(made, ".venv", "bin", "python")
    assert chosen(made, {"PYTHON": "/opt/py/bin/python"}) == "/opt/py/bin/python"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_run_the_venv(tmp_path, script):
    repo = checkout(tmp_path, venv=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"} | SCRIPTS[script]
    subprocess.run(["bash", f"examples/{script}", "train.iters=1"], cwd=repo, env=env, check=True, timeout=60)
    with open(os.path.join(repo, ".venv", "bin", "called")) as f:
        called = f.read().split()
    assert called[0] == "venv" and called[-1] == "train.iters=1"
    torchrun = script != "train_tiny_single_gpu.sh"
    assert "pretrain_omni.py" in called and ("torch.distributed.run" in called) == torchrun
