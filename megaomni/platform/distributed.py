"""Process start-up: the device, the process group (NCCL on GPUs, gloo on CPU) and megatron-core's
model-parallel groups. The CPU redirections (megaomni.platform.cpu) are installed here, and only
when there is no usable CUDA device."""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from megaomni.config import OmniConfig


def pick_device(requested: str) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(cfg: OmniConfig) -> torch.device:
    """Start (or join) the process group and build megatron-core's parallel state."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megaomni.platform import mcore_compat

    mcore_compat.apply()
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        from megaomni.platform import cpu

        cpu.activate()
    else:
        torch.cuda.set_device(device)
    # train.step_timeout_s: a collective fails after twice it rather than waiting torch's default
    # (30 min on gloo, 10 on NCCL); twice, so the step watchdog, which names the phase, ends it first.
    timeout_s = 2 * cfg.train.step_timeout_s
    timeout = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ:  # torchrun / SLURM wrapper: rendezvous from the environment
            dist.init_process_group(backend, **timeout)
        else:  # a plain `python pretrain_omni.py`: a world of one (environment left untouched)
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                    rank=0, world_size=1, **timeout)
    if not parallel_state.model_parallel_is_initialized():
        par = cfg.parallel
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=par.tp,
            pipeline_model_parallel_size=par.pp,
            virtual_pipeline_model_parallel_size=par.vpp if par.vpp > 1 else None,
            context_parallel_size=par.cp,
            expert_model_parallel_size=par.ep,
            **({"distributed_timeout_minutes": math.ceil(timeout_s / 60)} if timeout_s else {}),
        )
    torch.manual_seed(cfg.train.seed)
    model_parallel_cuda_manual_seed(cfg.train.seed)
    return device


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
