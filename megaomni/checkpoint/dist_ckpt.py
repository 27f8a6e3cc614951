"""Save and resume with ``megatron.core.dist_checkpointing`` (reshardable across layouts).

Layout of a checkpoint root::

    <root>/iter_0000100/      dist_checkpointing directory (model, optimizer, common state)
    <root>/iter_0000100/rng/  one file per rank: CPU/CUDA/megatron tracker RNG states
    <root>/latest             the newest complete iteration directory's name

``iter_0000000`` (``train.iters=0``) holds the initial weights only: loading it starts a run from
those weights (any layout), with a fresh optimizer, at iteration 0.

A checkpoint is written to ``iter_N.tmp`` and renamed when every rank has finished, and
``latest`` is replaced atomically after that, so a crash never leaves a half checkpoint that
resuming would pick up. An asynchronous save (megaomni.training.async_saves) does the renaming
in its finalize step, on every rank once all have written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace, nested_values
from megatron.core.dist_checkpointing.mapping import (
    LocalNonpersistentObject,
    ShardedBase,
    ShardedTensor,
    ShardedTensorFactory,
)
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from torch.distributed.checkpoint.api import CheckpointException

from megaomni.checkpoint.check import (
    LATEST,
    OPTIMIZER_STEP,
    WORLD_SIZE,
    SaveError,
    find_checkpoint,
    iterations,
    saved_shapes,
)
from megaomni.checkpoint.writer_processes import writers_die_with_trainer

log = logging.getLogger("megaomni.checkpoint")


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


def _model_state(chunks: list) -> dict:
    # Keys inside are global (layer numbers, tensor shards), whatever the layout: a checkpoint
    # loads under any TP / PP / VPP / EP.
    return {f"model{i}": chunk.sharded_state_dict() for i, chunk in enumerate(chunks)}


# The distributed optimizer's state saved in model space, so it reloads under any data- and
# model-parallel layout (megatron-core's default format refuses flattened shards); tensor state keyed
# by parameter name alone (no per-sub-optimizer prefix, see _optimizer_state).
_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}


def _dicts(tree):
    """``tree`` and every dict inside it (nested dicts and lists)."""
    if isinstance(tree, dict):
        yield tree
    for value in tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else ():
        yield from _dicts(value)


def _step_slots(tree) -> list[tuple[dict, str]]:
    """Where megatron-core's optimizer state keeps Adam's step count outside the tensors: one
    optimizer's ``state["common_step"]``, or (the distributed optimizer) every param group's ``step``."""
    slots = []
    for value in _dicts(tree):
        if "param_groups" in value:
            slots += [(value["state"], "common_step")] if "state" in value else \
                [(group, "step") for group in value["param_groups"]]
    return slots


def _allocate_adam_state(optimizer) -> None:
    """Zero moments and step 0 in every distributed optimizer's inner ``torch.optim.Adam`` that has
    not stepped yet, for the load to overwrite: megatron-core builds the state to load into from
    that optimizer's ``state_dict()`` and reads Adam's step count there, which torch's Adam creates
    only at its first step (TE's and Apex's fused Adam keep it in the param groups)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(sub, "optimizer", None)
        if isinstance(sub, DistributedOptimizer) and isinstance(inner, torch.optim.Adam) and not inner.state:
            for group in inner.param_groups:
                for param in group["params"]:
                    inner.state[param] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(param),
                                          "exp_avg_sq": torch.zeros_like(param)}


def _optimizer_state(optimizer, models: dict, step: int | None = None) -> tuple[dict, int]:
    """The optimizer's sharded state, to save (``step`` None) or to load ``step`` into, and Adam's
    step count (megatron-core steps all sub-optimizers together). Only its tensors are saved, by
    parameter name: its plain state (param groups, the step count) follows the optimizer's
    structure, which follows the layout (with EP > 1 expert parameters get a sub-optimizer of their
    own: other param groups, other ids). A resumed optimizer keeps the param groups it was built
    with (the run's settings) and takes the saved step count, kept apart (:data:`OPTIMIZER_STEP`)."""
    if step is not None:
        _allocate_adam_state(optimizer)
    state = optimizer.sharded_state_dict(models, is_loading=step is not None, metadata=_OPTIMIZER_METADATA)
    if step is None:
        step = int(next((float(c[k]) for c, k in _step_slots(state) if k in c), 0))
    else:
        for container, key in _step_slots(state):
            container[key] = torch.tensor(float(step)) if key == "common_step" else float(step)
    dict_list_map_inplace(lambda v: v if isinstance(v, (ShardedBase, LocalNonpersistentObject))
                          else LocalNonpersistentObject(v), state)
    return state, step


# What a checkpoint imported from Hugging Face records of its origin (tools/convert_hf.py import):
# the architecture, its config.json and its tokenizer / processor files. Every checkpoint trained
# from it keeps them, so that export needs the checkpoint alone.
ORIGIN_KEYS = ("hf_architecture", "hf_config", "hf_files")


def origin(common: dict) -> dict:
    """The :data:`ORIGIN_KEYS` entries of a checkpoint's common state."""
    return {key: common[key] for key in ORIGIN_KEYS if key in common}


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or what it came from, is ENOSPC (PyTorch's checkpoint writer passes other
    ranks' failures on as text)."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _on_every_rank(action: Callable, tmp: str, final: str):
    """Collective: ``action()``'s result, this rank's part of writing ``final`` into ``tmp``. A failure
    on any rank fails every rank (none waits for it), after ``tmp`` is removed; a full disk is one line."""
    failure, result = None, None
    try:
        result = action()
    except (Exception, CheckpointException) as err:  # any (PyTorch's is a BaseException): the other ranks must hear
        failure = err
    failures: list = [None] * dist.get_world_size()
    dist.all_gather_object(failures, None if failure is None else ("disk full" if _disk_full(failure) else "failed"))
    if not any(failures):
        return result
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    if "disk full" in failures:
        raise SaveError(f"no space left on device while saving {final}")
    raise failure or RuntimeError(f"saving {final} failed on rank {failures.index('failed')}")


def _write(state: dict, tmp: str, background: bool):
    """This rank's part of the checkpoint into ``tmp``; ``background``: the tensors are left to the
    returned AsyncRequest (the common state and RNG states are written now)."""
    with writers_die_with_trainer():
        request = dist_checkpointing.save(state, tmp, async_sharded_save=background)
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{dist.get_rank():05d}.pt"))
    return request


def _publish(root: str, final: str, tmp: str, keep_last: int) -> None:
    """Collective, once every rank has written its part: ``tmp`` becomes ``final``, then ``latest``
    names it, then (``keep_last``) older checkpoints go."""
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, LATEST + ".tmp"), "w") as f:
            f.write(os.path.basename(final))
        os.replace(os.path.join(root, LATEST + ".tmp"), os.path.join(root, LATEST))
        log.info("saved checkpoint %s", final)
        if keep_last:
            _remove_old(root, keep_last)
    dist.barrier()


def _remove_old(root: str, keep_last: int) -> None:
    """Removes the whole checkpoints of ``root`` before the one ``latest`` names (just saved) but
    the newest ``keep_last - 1`` of them; those after it (a run resumed from an earlier one) stay."""
    with open(os.path.join(root, LATEST)) as f:
        latest = int(f.read().strip()[len("iter_"):])
    for name in [n for n in iterations(root) if int(n[len("iter_"):]) < latest][keep_last - 1:]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        log.info("removed checkpoint %s (checkpoint.keep_last=%d)", os.path.join(root, name), keep_last)


def save_checkpoint(root: str, iteration: int, chunks: list, optimizer, scheduler, common: dict,
                    weights_only: bool = False, keep_last: int = 0, background=None) -> str:
    """Collective: every rank calls it. ``chunks`` are this rank's unwrapped model chunks;
    ``common`` is plain data identical on all ranks (data-loader position, config).
    ``weights_only``: the model alone (e.g. the initial weights, before any optimizer state).
    ``keep_last``: once saved, older whole checkpoints beyond the newest ``keep_last`` are removed (0: none).
    ``background`` (megaomni.training.async_saves.AsyncSaves): the tensors are written while training
    goes on, the checkpoint renamed and named ``latest`` when ``background`` finalizes it."""
    final, tmp = _iter_dir(root, iteration), _iter_dir(root, iteration) + ".tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)  # dist_checkpointing wants it to exist, and empty
    dist.barrier()
    if weights_only:
        state = {**_model_state(chunks), "weights_only": True}
    else:
        models = _model_state(chunks)
        optimizer_state, step = _optimizer_state(optimizer, models)
        state = {**models, "optimizer": optimizer_state, OPTIMIZER_STEP: step, "scheduler": scheduler.state_dict()}
    state.update({"iteration": iteration, WORLD_SIZE: dist.get_world_size(), **common})
    request = _on_every_rank(lambda: _write(state, tmp, background is not None), tmp, final)
    if background is None:
        _publish(root, final, tmp, keep_last)
        return final

    def finalize() -> None:  # after every rank's worker has finished writing
        _on_every_rank(lambda: [fn() for fn in request.finalize_fns], tmp, final)
        _publish(root, final, tmp, keep_last)

    background.schedule(request._replace(finalize_fns=[finalize]))
    return final


def resolve_checkpoint(path: str, world_size: int | None = None) -> str:
    """A checkpoint directory, or a root holding ``latest`` (its newest whole checkpoint: damaged
    ones are passed over, with a warning). Raises CheckpointError (one line) where none is whole."""
    path, skipped = find_checkpoint(path, world_size)
    if skipped and (not dist.is_initialized() or dist.get_rank() == 0):
        log.warning("resuming from %s, the newest whole checkpoint: passed over %s", path, "; ".join(skipped))
    return path


def _fitting(state: dict, path: str) -> tuple[dict, list[str], list[str]]:
    """``checkpoint.strict=false``: ``state`` with what the checkpoint lacks, or holds in another
    shape, kept as it is (not loaded); the weights (model keys, over all ranks) left at their
    initial values, and the checkpoint's weights not loaded."""
    saved = saved_shapes(path)

    def fits(value) -> bool:
        if isinstance(value, ShardedTensor):
            return saved.get(value.key, ()) == tuple(value.global_shape)
        if isinstance(value, ShardedTensorFactory):  # e.g. SwiGLU's fc1: the tensors it makes
            return all(fits(v) for v in nested_values(value.build()))
        return value.unique_key in saved  # a ShardedObject

    left, loaded = [], []

    def keep_unfitting(value):
        if not isinstance(value, ShardedBase):
            return value
        fit = fits(value)
        (loaded if fit else left).append(value.key)
        return value if fit else LocalNonpersistentObject(value.data)

    dict_list_map_inplace(keep_unfitting, state)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (left, loaded))
    left = {k for ks, _ in gathered for k in ks if _is_weight(k)}
    loaded = {k for _, ks in gathered for k in ks}
    return state, sorted(left), sorted(k for k in saved if _is_weight(k) and k not in loaded)


def _is_weight(key: str) -> bool:
    """A model tensor's key (not the optimizer's state, nor a module's extra state)."""
    return not key.startswith("optimizer.") and "_extra_state" not in key


# Where optimizers keep the fp32 master weights: megatron-core's distributed optimizer, and its
# mixed-precision one; fp32 without the distributed optimizer keeps none but the weights.
_MASTER_PREFIXES = ("optimizer.state.param.", "optimizer.state.fp32_param.")


def _masters_from_saved(state: dict, saved: dict) -> bool:
    """A checkpoint of another kind of optimizer holds the master weights under the other key, or
    (fp32, no distributed optimizer) none: they are read from the other key, or left for the
    weights to fill after the load (True: some were)."""
    from_weights = False

    def redirect(value):
        nonlocal from_weights
        prefix = next((p for p in _MASTER_PREFIXES if isinstance(value, (ShardedTensor, ShardedTensorFactory))
                       and value.key not in saved and value.key.startswith(p)), None)
        if prefix is None:
            return value
        name = value.key[len(prefix):]
        other = next((p + name for p in _MASTER_PREFIXES if p + name in saved), None)
        if other is not None:
            value.key = other
            return value
        if name not in saved:
            return value  # absent altogether: strict loading names it
        from_weights = True
        return LocalNonpersistentObject(value.data)

    dict_list_map_inplace(redirect, state)
    return from_weights


def _load(state: dict, path: str, strict: bool) -> dict:
    if strict:
        return dist_checkpointing.load(state, path)
    state, left, unused = _fitting(state, path)
    if dist.get_rank() == 0:  # the lists cover every rank's weights
        log.warning("checkpoint.strict=false: %d weights left at their initial values (absent from the checkpoint "
                    "or of another shape): %s", len(left), ", ".join(left) or "none")
        log.warning("checkpoint.strict=false: %d weights of the checkpoint not loaded (absent from this model or "
                    "of another shape): %s", len(unused), ", ".join(unused) or "none")
    return dist_checkpointing.load(state, path)


def load_weights(path: str, chunks: list, strict: bool = True) -> dict:
    """Collective. The model's weights alone, from any checkpoint (``path`` resolved); returns its
    common state (``config``, ...). ``strict=False``: those that fit (see :func:`_fitting`)."""
    path = resolve_checkpoint(path)
    state = _load(_model_state(chunks), path, strict)
    for i, chunk in enumerate(chunks):
        chunk.load_state_dict(state.pop(f"model{i}"))
    return dist_checkpointing.load_common_state_dict(path)


def load_checkpoint(path: str, chunks: list, optimizer, scheduler, finetune: bool = False, strict: bool = True,
                    reset_schedule: bool = False) -> dict:
    """Collective. Restores the model, and from a full checkpoint the optimizer, scheduler and
    (same layout only) RNG; returns the common state saved with it (``iteration``, data-loader
    position, ...). A weights-only checkpoint, or any with ``finetune``, starts training from its
    weights at iteration 0 (a new optimizer, schedule and data position). ``strict=False``: the
    weights (and their optimizer state) that fit, the rest as built, both listed in the log.
    ``reset_schedule``: the scheduler takes this run's settings, from the saved step."""
    path = resolve_checkpoint(path, dist.get_world_size())
    common = dist_checkpointing.load_common_state_dict(path)
    if common.get("weights_only") or finetune:
        load_weights(path, chunks, strict)
        optimizer.reload_model_params()  # fp32 master copies follow the loaded weights
        log.info("initialised from weights %s", path)
        return {"iteration": 0, **origin(common)}
    models = _model_state(chunks)
    optimizer_state, _ = _optimizer_state(optimizer, models, step=common[OPTIMIZER_STEP])
    masters_from_weights = _masters_from_saved(optimizer_state, saved_shapes(path))
    state = _load({**models, "optimizer": optimizer_state}, path, strict)
    weights = [state.pop(f"model{i}") for i in range(len(chunks))]
    for chunk, chunk_weights in zip(chunks, weights):
        chunk.load_state_dict(chunk_weights)
    if masters_from_weights:  # the distributed optimizer's load copies its masters over the weights
        weights = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in w.items()} for w in weights]
    optimizer.load_state_dict(state.pop("optimizer"))
    if masters_from_weights:
        for chunk, chunk_weights in zip(chunks, weights):
            chunk.load_state_dict(chunk_weights)
        optimizer.reload_model_params()
        log.info("checkpoint %s keeps no master weights (fp32, saved without the distributed optimizer): "
                 "the optimizer's are its weights", path)
    # megatron-core's scheduler takes its settings from the checkpoint unless told to override them.
    scheduler.override_opt_param_scheduler = reset_schedule
    scheduler.load_state_dict(state.pop("scheduler"))
    if common[WORLD_SIZE] == dist.get_world_size():
        _set_rng_state(torch.load(os.path.join(path, "rng", f"rank_{dist.get_rank():05d}.pt"), weights_only=False))
    else:
        log.warning("checkpoint %s was saved by %d ranks, this run has %d: RNG states re-seeded",
                    path, common[WORLD_SIZE], dist.get_world_size())
    log.info("loaded checkpoint %s (iteration %d)", path, state["iteration"])
    return state
