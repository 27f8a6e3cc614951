"""Replicated encoders start equal. An encoder whole on every LLM TP rank, or on every pipeline
rank under the joint schedule, would otherwise start (and train) as different copies: on 2x H200
the joint run's first loss differed from the baseline's by 0.2% and spiked at iteration 10 when
each rank drew its own. Two gloo processes build the model chunks as training does, from global
random states made to differ (as each GPU rank's earlier draws made them there): each encoder is
built from a state seeded by its name (megaomni.models.initial_weights), so the copies are equal
before ``sync_encoder_replicas`` already, and stay so after it."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, layout: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from megaomni.parallel.model_chunks import build_model_chunks, sync_encoder_replicas
    from megaomni.platform.distributed import init_distributed, shutdown
    from tests.models.test_parts import VOCAB, small_config

    cfg = small_config()
    cfg.parallel.tp, cfg.parallel.pp = layout["tp"], layout["pp"]
    cfg.pipeline.schedule = layout["schedule"]
    init_distributed(cfg)
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    torch.manual_seed(1000 + rank)
    model_parallel_cuda_manual_seed(1000 + rank)
    chunks = build_model_chunks(cfg, VOCAB, {"vision": 5, "audio": 6}.__getitem__)

    def encoders():
        return {f"{name}.{key}": value.detach().clone() for chunk in chunks for name in chunk.encoder_names
                for key, value in getattr(chunk, f"{name}_encoder").state_dict().items() if torch.is_tensor(value)}

    before = encoders()
    sync_encoder_replicas(cfg, chunks)
    torch.save({"before": before, "after": encoders()}, os.path.join(out, f"{rank}.pt"))
    shutdown()


@pytest.mark.parametrize("layout", [{"tp": 1, "pp": 2, "schedule": "joint"},
                                    {"tp": 2, "pp": 1, "schedule": "megatron"}], ids=["joint-pp2", "tp2-encoder_whole"])
def test_replicated_encoders_start_equal(layout, tmp_path):
    mp.spawn(_worker, args=(_free_port(), layout, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert ranks[0]["after"].keys() == ranks[1]["after"].keys() and ranks[0]["after"]
    for key, value in ranks[0]["after"].items():
        assert torch.equal(value, ranks[1]["after"][key]), key
        assert torch.equal(value, ranks[0]["before"][key]), key  # the first copy is the source
        assert torch.equal(ranks[1]["before"][key], value), key  # drawn alike, whatever the global state
