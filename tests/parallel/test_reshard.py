"""Checkpoints reshard: a run saved under one layout resumes under another and continues the
uninterrupted run (model, optimizer state, LR schedule and data position all carried over)."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import DENSE, MOE, assert_same_run

pytestmark = pytest.mark.slow

TP2_PP2 = ("parallel.tp=2", "parallel.pp=2")
DISTOPT = ("parallel.distributed_optimizer=true",)
PP2_EP2 = ("parallel.pp=2", "parallel.ep=2")


def _resume(parity_setup, tmp_path, model, saved_by: str, iteration: int, iters: int, out: str, *layout: str,
            nproc: int = 1) -> list[dict]:
    checkpoint = tmp_path / saved_by / "checkpoints" / f"iter_{iteration:07d}"
    return parity_setup.run(model, tmp_path / out, f"train.iters={iters}", f"checkpoint.load={checkpoint}", *layout,
                            nproc=nproc)


def test_checkpoint_reshards_between_tp1_and_tp2_pp2(parity_setup, tmp_path):
    run = parity_setup.run
    six_iters = ("train.iters=6", "checkpoint.save_interval=3")
    single = run(DENSE, tmp_path / "tp1", *six_iters)
    split = run(DENSE, tmp_path / "tp2pp2", *six_iters, *TP2_PP2, nproc=4)
    assert_same_run(single, split, rel=1e-5)

    def resume(saved_by: str, out: str, *layout: str, nproc: int = 1) -> list[dict]:
        return _resume(parity_setup, tmp_path, DENSE, saved_by, 3, 6, out, *layout, nproc=nproc)

    assert_same_run(single[3:], resume("tp2pp2", "tp1_from_tp2pp2"), rel=1e-5)
    assert_same_run(single[3:], resume("tp1", "tp2pp2_from_tp1", *TP2_PP2, nproc=4), rel=1e-5)


def test_moe_checkpoint_reshards_across_expert_parallelism(parity_setup, tmp_path):
    """With EP > 1 megatron-core gives the expert parameters an optimizer of their own (at EP 1 they
    share the dense one): the checkpoint's optimizer state, keyed by parameter name alone, moves
    between the two. Saved at PP2 x EP2, resumed in one process, and the reverse (the second step
    shows Adam's carried state)."""
    run = parity_setup.run
    two_iters = ("train.iters=2", "checkpoint.save_interval=1")
    single = run(MOE, tmp_path / "ep1", *two_iters)
    split = run(MOE, tmp_path / "pp2ep2", *two_iters, *PP2_EP2, nproc=4)
    assert_same_run(single, split, rel=1e-5)

    def resume(saved_by: str, out: str, *layout: str, nproc: int = 1) -> list[dict]:
        return _resume(parity_setup, tmp_path, MOE, saved_by, 1, 2, out, *layout, nproc=nproc)

    assert_same_run(single[1:], resume("pp2ep2", "ep1_from_pp2ep2"), rel=1e-5)
    assert_same_run(single[1:], resume("ep1", "pp2ep2_from_ep1", *PP2_EP2, nproc=4), rel=1e-5)


def test_distributed_optimizer_checkpoint_reshards_to_one_process_and_back(parity_setup, tmp_path):
    """The distributed optimizer's state (sharded over DP2, with fp32 master weights) resumes in one
    process's plain optimizer (none: the weights are the masters), and the reverse, into a
    distributed optimizer that has not stepped when it loads (torch's Adam has no state then)."""
    run = parity_setup.run
    two_iters = ("train.iters=2", "checkpoint.save_interval=1")
    single = run(DENSE, tmp_path / "dp1", *two_iters)
    sharded = run(DENSE, tmp_path / "dp2", *two_iters, *DISTOPT, nproc=2)
    assert_same_run(single, sharded, rel=1e-5)

    def resume(saved_by: str, out: str, *layout: str, nproc: int = 1) -> list[dict]:
        return _resume(parity_setup, tmp_path, DENSE, saved_by, 1, 2, out, *layout, nproc=nproc)

    assert_same_run(single[1:], resume("dp2", "dp1_from_dp2"), rel=1e-5)
    assert_same_run(single[1:], resume("dp1", "dp2_from_dp1", *DISTOPT, nproc=2), rel=1e-5)
