"""Dashboards beside ``metrics.jsonl``: TensorBoard event files (``logging.tensorboard``) and
Weights & Biases (``logging.wandb_project``), written by the rank that writes the metrics.

Both get every numeric field of a metrics record, at step ``iteration``; nested dicts are
flattened with ``/`` (``skipped`` -> ``skipped/<reason>``). Their packages are optional: imported
only when asked for (validation names the package to install before anything starts).
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from megaomni.config import LoggingConfig

# The field asking for each dashboard -> the pip package it needs.
PACKAGES = {"tensorboard": "tensorboard", "wandb_project": "wandb"}
WANDB_MODES = ("online", "offline", "disabled")


def missing_packages(logging_cfg: LoggingConfig) -> dict[str, str]:
    """The fields set whose package is not installed -> that package."""
    return {name: package for name, package in PACKAGES.items()
            if getattr(logging_cfg, name) and importlib.util.find_spec(package) is None}


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric fields of ``record`` (bools are not metrics), nested dicts as ``outer/inner``;
    ``iteration`` is the step, not a value."""
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "iteration":
            flat[name] = value
    return flat


class Sink(Protocol):
    def write(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)

    def write(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a dashboard watching the run sees each step as it ends

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, name: str, mode: str, config: dict, run_dir: str):
        import wandb

        self.run = wandb.init(project=project, name=name or None, mode=mode, config=config, dir=run_dir)

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Dashboards:
    """The dashboards ``cfg.logging`` asks for; none where ``enabled`` is false (other ranks)."""

    def __init__(self, logging_cfg: LoggingConfig, config: dict, run_dir: str, enabled: bool):
        self.sinks: list[Sink] = []
        if not enabled:
            return
        if logging_cfg.tensorboard:
            self.sinks.append(TensorBoardSink(logging_cfg.tensorboard))
        if logging_cfg.wandb_project:
            self.sinks.append(WandbSink(logging_cfg.wandb_project, logging_cfg.wandb_name, logging_cfg.wandb_mode,
                                        config, run_dir))

    def write(self, record: dict) -> None:
        if self.sinks:
            values = flatten(record)
            for sink in self.sinks:
                sink.write(record["iteration"], values)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
