"""Save and resume with ``megatron.core.dist_checkpointing`` (reshardable across layouts).

Layout of a checkpoint root::

    <root>/iter_0000100/      dist_checkpointing directory (model, optimizer, common state)
    <root>/iter_0000100/rng/  one file per rank: CPU/CUDA/megatron tracker RNG states
    <root>/latest             the newest complete iteration directory's name

A checkpoint is written to ``iter_N.tmp`` and renamed when every rank has finished, and
``latest`` is replaced atomically after that, so a crash never leaves a half checkpoint that
resuming would pick up.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

log = logging.getLogger("megaomni.checkpoint")

LATEST = "latest"


def _iter_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(model, optimizer, is_loading: bool) -> dict:
    model_sd = model.sharded_state_dict()
    return {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading)}


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler, common: dict) -> str:
    """Collective: every rank calls it. ``model`` is the unwrapped MegatronModule; ``common`` is
    plain data identical on all ranks (iteration bookkeeping, data-loader position, config)."""
    final, tmp = _iter_dir(root, iteration), _iter_dir(root, iteration) + ".tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)  # dist_checkpointing wants it to exist, and empty
    dist.barrier()
    state = _sharded_state(model, optimizer, is_loading=False)
    state.update(iteration=iteration, scheduler=scheduler.state_dict(), **common)
    dist_checkpointing.save(state, tmp)
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, LATEST + ".tmp"), "w") as f:
            f.write(os.path.basename(final))
        os.replace(os.path.join(root, LATEST + ".tmp"), os.path.join(root, LATEST))
        log.info("saved checkpoint %s", final)
    dist.barrier()
    return final


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory, or a root holding ``latest``."""
    latest = os.path.join(path, LATEST)
    if os.path.isfile(latest):
        with open(latest) as f:
            path = os.path.join(path, f.read().strip())
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        raise FileNotFoundError(f"checkpoint.load={path}: not a checkpoint (no metadata.json, no {LATEST})")
    return path


def load_checkpoint(path: str, model, optimizer, scheduler) -> dict:
    """Collective. Restores model, optimizer, scheduler and (same layout only) RNG; returns the
    common state saved with it (``iteration``, data-loader position, ...)."""
    path = resolve_checkpoint(path)
    state = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), path)
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    scheduler.load_state_dict(state.pop("scheduler"))
    rng_dir = os.path.join(path, "rng")
    rng_file = os.path.join(rng_dir, f"rank_{dist.get_rank():05d}.pt")
    if len(os.listdir(rng_dir)) == dist.get_world_size() and os.path.isfile(rng_file):
        _set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        log.warning("checkpoint %s was saved by %d ranks, this run has %d: RNG states re-seeded",
                    path, len(os.listdir(rng_dir)), dist.get_world_size())
    log.info("loaded checkpoint %s (iteration %d)", path, state["iteration"])
    return state
