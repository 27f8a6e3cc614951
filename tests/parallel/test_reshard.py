"""Checkpoints reshard: a run saved under one layout resumes under another and continues the
uninterrupted run (model, optimizer state, LR schedule and data position all carried over)."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import DENSE, assert_same_run

pytestmark = pytest.mark.slow

TP2_PP2 = ("parallel.tp=2", "parallel.pp=2")
SIX_ITERS = ("train.iters=6", "checkpoint.save_interval=3")


def test_checkpoint_reshards_between_tp1_and_tp2_pp2(parity_setup, tmp_path):
    run = parity_setup.run
    single = run(DENSE, tmp_path / "tp1", *SIX_ITERS)
    split = run(DENSE, tmp_path / "tp2pp2", *SIX_ITERS, *TP2_PP2, nproc=4)
    assert_same_run(single, split, rel=1e-5)

    def resume(saved_by: str, out: str, *layout: str, nproc: int = 1) -> list[dict]:
        checkpoint = tmp_path / saved_by / "checkpoints" / "iter_0000003"
        return run(DENSE, tmp_path / out, "train.iters=6", f"checkpoint.load={checkpoint}", *layout, nproc=nproc)

    assert_same_run(single[3:], resume("tp2pp2", "tp1_from_tp2pp2"), rel=1e-5)
    assert_same_run(single[3:], resume("tp1", "tp2pp2_from_tp1", *TP2_PP2, nproc=4), rel=1e-5)
