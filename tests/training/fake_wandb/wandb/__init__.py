"""A stand-in for the ``wandb`` package in a training run's process (put on PYTHONPATH by
tests/training/test_dashboards.py): each call the W&B sink makes, one JSON line in $FAKE_WANDB_LOG."""

import json
import os


def _record(entry: dict) -> None:
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\n")


class _Run:
    def log(self, values, step):
        _record({"step": step, "values": values})

    def finish(self):
        _record({"finish": True})


def init(**kwargs):
    _record({"init": kwargs})
    return _Run()
