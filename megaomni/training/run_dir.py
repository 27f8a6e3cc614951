"""Runs never overwrite runs: a directory holding an earlier run (its ``metrics.jsonl``, its
checkpoints) is refused at start-up, before any data is loaded, unless this run resumes from one
of its checkpoints (``checkpoint.load`` under ``train.output_dir`` or the checkpoint root) or
``train.overwrite=true``."""

from __future__ import annotations

import glob
import logging
import os
from typing import Optional

import torch.distributed as dist

from megaomni.checkpoint.dist_ckpt import LATEST
from megaomni.config import ConfigError, OmniConfig

log = logging.getLogger("megaomni.train")


def checkpoint_root(cfg: OmniConfig) -> str:
    return cfg.checkpoint.save or os.path.join(cfg.train.output_dir, "checkpoints")


def _holds_checkpoints(root: str) -> bool:
    # An iter_N.tmp is a save that never finished: nothing resumes from it.
    return os.path.isfile(os.path.join(root, LATEST)) or \
        any(not path.endswith(".tmp") for path in glob.glob(os.path.join(root, "iter_*")))


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def earlier_run(cfg: OmniConfig) -> Optional[tuple[str, str]]:
    """What of an earlier run this run's directories hold, and the fixes (the directory named in
    both); None where they hold none, or this run resumes it."""
    out, root, load = cfg.train.output_dir, checkpoint_root(cfg), cfg.checkpoint.load
    if load and not cfg.checkpoint.finetune and (_inside(load, out) or _inside(load, root)):
        return None
    metrics = os.path.join(out, "metrics.jsonl")
    parts = [name for name, held in (("metrics.jsonl", os.path.isfile(metrics) and os.path.getsize(metrics) > 0),
                                     ("checkpoints", _holds_checkpoints(root))) if held]
    if not parts:
        return None
    field, where = ("checkpoint.save", root) if parts == ["checkpoints"] and cfg.checkpoint.save else \
        ("train.output_dir", out)
    resume = f"resume it with checkpoint.load={root}, " if "checkpoints" in parts else ""
    return (f"{field}={where} holds an earlier run ({', '.join(parts)})",
            f"{resume}write over it with train.overwrite=true, or set another {field}")


def check_run_dirs(cfg: OmniConfig) -> None:
    """Collective: rank 0 looks (the one view of the file system every rank follows), and every
    rank raises the same :class:`ConfigError` for an earlier run this one would write over."""
    found = [earlier_run(cfg) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(found, src=0)
    if found[0] is None:
        return
    held, fixes = found[0]
    if not cfg.train.overwrite:
        raise ConfigError(f"{held}: {fixes}")
    if dist.get_rank() == 0:
        log.warning("%s: writing over it (train.overwrite=true)", held)
