"""On two GPUs, megaomni's executor runs a pipeline step without a host sync.

A sync inside a step (a copy from pageable memory, ``.item()``) stops that rank's host until its
GPU has caught up, so it cannot queue the next actions while the GPU works: stage 0 once copied
megatron-core's host zero token count to the GPU at every forward, and its host could then never
run ahead of its GPU. ``pipeline.sync_debug=error`` turns any sync in a step's actions (from the
second step on) into an error; the joint schedule (with encoder calls over several micro-batches)
and the baseline on the executor must both finish, in bf16. Needs two CUDA GPUs.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import read_metrics, run_pretrain

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@pytest.mark.parametrize("schedule", [
    ("pipeline.schedule=joint", "pipeline.encoder_group=2", "pipeline.joint_fallback=false"),
    ("pipeline.schedule=megatron", "pipeline.executor=plan"),
], ids=["joint", "baseline_on_executor"])
def test_pipeline_step_has_no_host_sync(toy_data, tmp_path, schedule):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path}", "train.device=cuda",
                        "train.bf16=true", "parallel.pp=2", "train.iters=4", "train.warmup_iters=0",
                        "checkpoint.save_interval=0", "checkpoint.save_last=false", "pipeline.sync_debug=error",
                        *schedule, nproc=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert [r["iteration"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
