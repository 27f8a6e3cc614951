"""Is a checkpoint whole? Checked at start-up, before any model or data loader is built: every
piece present and readable, each failure one line naming the file and what is wrong.

An iteration directory (megaomni/checkpoint/dist_ckpt.py writes them) holds ``metadata.json``
(megatron-core's format), ``common.pt`` (plain state: iteration, data position, config, ...),
``.metadata`` (PyTorch's index of every tensor: which ``.distcp`` file, at which byte, how long),
the ``.distcp`` files and ``rng/rank_N.pt`` per rank. The bytes inside a tensor carry no
checksum, so damage there is not found; a file cut short, or overwritten where an item begins, is.

A root holding ``latest`` whose newest checkpoint is damaged falls back to the newest whole one
before it (:func:`find_checkpoint` says which were passed over, for the caller to log).
"""

from __future__ import annotations

import glob
import json
import os
import re

import torch

from megaomni.config import ConfigError

LATEST = "latest"
# The common state's entries a full checkpoint (not weights only) needs: Adam's step count (saved
# apart from the optimizer's layout-dependent plain state) and the world that saved it.
OPTIMIZER_STEP = "optimizer_step"
WORLD_SIZE = "world_size"
# Every item PyTorch's distributed checkpoint writes is a torch.save archive: a zip, which starts so.
_ITEM_START = b"PK\x03\x04"


class CheckpointError(ConfigError):
    """A checkpoint that cannot be loaded, or saved, worded for the user (one line)."""


class SaveError(CheckpointError):
    """A checkpoint that could not be written, e.g. on a full disk (pretrain_omni.py: exit 4)."""


def _first_line(err: BaseException) -> str:
    """The exception's first sentence (PyTorch's run on with advice about the file's origin)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0][:200]}" if text else type(err).__name__


def load_common(path: str) -> dict:
    """``common.pt`` of the iteration directory ``path`` (as megatron-core reads it)."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(path)


def checkpoint_problem(path: str, world_size: int | None = None) -> str | None:
    """What is wrong with the iteration directory ``path`` (the file, then what), or None.
    ``world_size``: this run's; each rank's RNG state is needed where it equals the saver's
    (None: the RNG states are not needed)."""
    try:
        with open(os.path.join(path, "metadata.json")) as f:
            json.load(f)["sharded_backend"]
    except FileNotFoundError:
        return "metadata.json: missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"metadata.json: unreadable ({_first_line(e)})"
    if not os.path.isfile(os.path.join(path, "common.pt")):
        return "common.pt: missing"
    try:
        common = load_common(path)
    except Exception as e:  # whatever unpickling a damaged file raises
        return f"common.pt: unreadable ({_first_line(e)})"
    if not common.get("weights_only") and OPTIMIZER_STEP not in common:
        return (f"common.pt: written by an earlier megaomni (no {OPTIMIZER_STEP}), whose optimizer state this "
                "one cannot load; load its weights alone (checkpoint.finetune=true)")
    return _tensor_files_problem(path) or _rng_problem(path, common, world_size)


def saved_shapes(path: str) -> dict[str, tuple | None]:
    """Every item of the checkpoint by key: a tensor's global shape, None for an object."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    items = FileSystemReader(path).read_metadata().state_dict_metadata
    return {key: tuple(m.size) if isinstance(m, TensorStorageMetadata) else None for key, m in items.items()}


def _tensor_files_problem(path: str) -> str | None:
    from torch.distributed.checkpoint import FileSystemReader

    if not os.path.isfile(os.path.join(path, ".metadata")):
        return ".metadata: missing (the index of the .distcp files)"
    try:
        items = FileSystemReader(path).read_metadata().storage_data
    except Exception as e:  # whatever unpickling a damaged file raises
        return f".metadata: unreadable ({_first_line(e)})"
    by_file: dict[str, list] = {}
    for index, info in items.items():
        by_file.setdefault(info.relative_path, []).append((info.offset, info.length, index.fqn))
    for name, entries in sorted(by_file.items()):
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name}: missing"
        size, needed = os.path.getsize(file), max(offset + length for offset, length, _ in entries)
        if size < needed:
            return f"{name}: truncated ({size} bytes, the index needs {needed})"
        with open(file, "rb") as f:
            for offset, _, fqn in sorted(entries):
                f.seek(offset)
                if f.read(len(_ITEM_START)) != _ITEM_START:
                    return f"{name}: garbled (no saved item at byte {offset}, where the index puts {fqn})"
    return None


def _rng_problem(path: str, common: dict, world_size: int | None) -> str | None:
    if common.get("weights_only") or world_size is None or common.get(WORLD_SIZE) != world_size:
        return None  # not restored: weights alone, or another world size (ranks re-seeded)
    if not os.path.isdir(os.path.join(path, "rng")):
        return "rng/: missing (each rank's RNG state)"
    for rank in range(world_size):
        name = os.path.join("rng", f"rank_{rank:05d}.pt")
        if not os.path.isfile(os.path.join(path, name)):
            return f"{name}: missing"
        try:
            torch.load(os.path.join(path, name), weights_only=False)
        except Exception as e:  # whatever unpickling a damaged file raises
            return f"{name}: unreadable ({_first_line(e)})"
    return None


def iterations(root: str) -> list[str]:
    """The complete iteration directories of ``root`` (no ``.tmp``), newest first."""
    names = [n for n in os.listdir(root) if re.fullmatch(r"iter_\d+", n) and os.path.isdir(os.path.join(root, n))]
    return sorted(names, key=lambda n: int(n[5:]), reverse=True)


def find_checkpoint(load: str, world_size: int | None = None) -> tuple[str, list[str]]:
    """The iteration directory ``checkpoint.load=load`` resumes from, and the damaged ones passed
    over on the way (``"iter_N: what is wrong"``). ``load`` is an iteration directory (damaged: an
    error) or a root holding ``latest`` (its newest whole checkpoint, from ``latest`` down)."""
    latest = os.path.join(load, LATEST)
    if os.path.isfile(latest):
        with open(latest) as f:
            named = f.read().strip()
        # Those before it (all of them where `latest` is garbled).
        number = int(named[5:]) if re.fullmatch(r"iter_\d+", named) else None
        older = [n for n in iterations(load) if number is None or int(n[5:]) < number]
        skipped = []
        for name in [named, *older]:
            if not os.path.isdir(os.path.join(load, name)):
                skipped.append(f"{name}: absent (named by {LATEST})")
                continue
            problem = checkpoint_problem(os.path.join(load, name), world_size)
            if problem is None:
                return os.path.join(load, name), skipped
            skipped.append(f"{name}/{problem}")
        raise CheckpointError(f"checkpoint.load={load}: no whole checkpoint ({'; '.join(skipped)})")
    if os.path.isfile(os.path.join(load, "metadata.json")):
        problem = checkpoint_problem(load, world_size)
        if problem:
            raise CheckpointError(f"checkpoint.load={load}: {problem}")
        return load, []
    if glob.glob(os.path.join(load, "*.tar")) or os.path.isdir(os.path.join(load, ".nv-meta")):
        raise CheckpointError(f"checkpoint.load={load}: a data directory (*.tar shards), not a checkpoint; set it "
                              f"to a checkpoint directory (iter_N) or the folder holding `{LATEST}`")
    raise CheckpointError(f"checkpoint.load={load}: not a checkpoint (no metadata.json, no {LATEST})")
