"""The step-time breakdown in metrics.jsonl: its parts (data wait, forward and backward, optimizer)
fit inside the step, the encoders' and the LLM's recorded actions inside forward and backward,
and each rank-statistic's largest value is at least its mean (two gloo ranks, distinct values)."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import read_metrics, run_pretrain


def test_step_time_parts_fit_in_the_step(toy_data, tmp_path):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path}", "train.iters=2",
                        "train.warmup_iters=1",
                        "pipeline.executor=plan", "pipeline.timeline_interval=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for record in read_metrics(str(tmp_path)):
        parts = [record[k] for k in ("data_wait_s", "forward_backward_s", "optimizer_s")]
        assert all(p > 0 for p in parts) and sum(parts) <= record["step_time_s"]
        assert 0 < record["encoders_s"] and 0 < record["llm_s"]
        assert record["encoders_s"] + record["llm_s"] <= record["forward_backward_s"]
        # One rank: its own figures are the largest and the mean.
        assert record["data_wait_s_max"] == record["data_wait_s_mean"] == record["data_wait_s"]


def _worker(rank: int, port: int, out: str) -> None:
    from megaomni.training.step_time import over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    values = over_ranks({"step_time_s": 1.0 + rank, "data_wait_s": 0.5 * rank}, torch.device("cpu"))
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(values, f)
    dist.destroy_process_group()


def test_over_ranks_gives_largest_and_mean(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in range(2):
        with open(tmp_path / f"{rank}.json") as f:
            assert json.load(f) == {"step_time_s_max": 2.0, "step_time_s_mean": 1.5,
                                    "data_wait_s_max": 0.5, "data_wait_s_mean": 0.25}
