"""Shared fixtures: toy data made once per session, a runner for the shipped entry point, and
megatron-core's process-wide MoE state reset between tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(ROOT, "examples", "configs", "tiny_omni.yaml")


@pytest.fixture(autouse=True)
def _fresh_moe_aux_loss_scale():
    """megatron-core keeps the MoE auxiliary-loss scale in a class attribute shaped by the first
    value set: a test's bare MoE backward (outside a schedule) leaves a 0-dim one that a later
    test's schedule cannot copy its [1]-shaped scale into. Each test starts with it unset."""
    yield
    moe_utils = sys.modules.get("megatron.core.transformer.moe.moe_utils")
    if moe_utils is not None:
        moe_utils.MoEAuxLossAutoScaler.main_loss_backward_scale = None


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("toy")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_toy_data.py"), "--out", str(out),
                    "--samples", "512", "--seed", "0"], check=True, cwd=ROOT, timeout=300)
    return str(out)


def start_pretrain(*overrides: str, nproc: int = 1, script: str = os.path.join(ROOT, "pretrain_omni.py"),
                   **popen) -> subprocess.Popen:
    """Start ``script`` (pretrain_omni.py) with the tiny recipe (torchrun when ``nproc > 1``);
    ``popen``: Popen's arguments (output captured as text by default)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        cmd = [sys.executable, script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", script]
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([*cmd, "--config", TINY_CONFIG, *overrides], env=env, cwd=ROOT, **popen)


def run_pretrain(*overrides: str, nproc: int = 1, timeout: int = 900,
                 script: str = os.path.join(ROOT, "pretrain_omni.py")) -> subprocess.CompletedProcess:
    """Run ``script`` to the end (see :func:`start_pretrain`)."""
    proc = start_pretrain(*overrides, nproc=nproc, script=script)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def load_script(relative: str) -> types.ModuleType:
    """A script of the repository (``benchmarks/x.py``: scripts, not a package) as a module, registered
    under its name (dataclasses look their module up)."""
    name = os.path.splitext(os.path.basename(relative))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def read_metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def saved_tensors(path, tmp_path) -> dict:
    """A checkpoint's tensors by global name (megatron-core's dist_checkpointing writes PyTorch's
    distributed checkpoint format, readable in one process)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f"{abs(hash(str(path)))}.pt"
    dcp_to_torch_save(str(path), str(out))
    return {k: v for k, v in torch.load(out, weights_only=False).items() if torch.is_tensor(v)}
