"""Checkpoints reshard: a run saved under one layout resumes under another and continues the
uninterrupted run (model, optimizer state, LR schedule and data position all carried over)."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import DENSE, MOE, assert_same_run

pytestmark = pytest.mark.slow

TP2_PP2 = ("parallel.tp=2", "parallel.pp=2")
DISTOPT = ("parallel.distributed_optimizer=true",)
EP2 = ("parallel.ep=2",)


def _assert_reshards(parity_setup, tmp_path, model, layout: tuple[str, ...], nproc: int, saved_at: int,
                     iters: int) -> None:
    """``model`` trained for ``iters`` in one process and under ``layout`` (the same run), checkpointed
    every ``saved_at``; each layout's checkpoint at ``saved_at`` resumed under the other continues the
    one-process run."""
    run = parity_setup.run
    schedule = (f"train.iters={iters}", f"checkpoint.save_interval={saved_at}")
    single = run(model, tmp_path / "one", *schedule)
    assert_same_run(single, run(model, tmp_path / "split", *schedule, *layout, nproc=nproc), rel=1e-5)

    def resume(saved_by: str, out: str, *resumed_layout: str, ranks: int = 1) -> list[dict]:
        checkpoint = tmp_path / saved_by / "checkpoints" / f"iter_{saved_at:07d}"
        return run(model, tmp_path / out, f"train.iters={iters}", f"checkpoint.load={checkpoint}", *resumed_layout,
                   nproc=ranks)

    assert_same_run(single[saved_at:], resume("split", "one_from_split"), rel=1e-5)
    assert_same_run(single[saved_at:], resume("one", "split_from_one", *layout, ranks=nproc), rel=1e-5)


def test_checkpoint_reshards_between_tp1_and_tp2_pp2(parity_setup, tmp_path):
    _assert_reshards(parity_setup, tmp_path, DENSE, TP2_PP2, nproc=4, saved_at=2, iters=4)


def test_moe_checkpoint_reshards_across_expert_parallelism(parity_setup, tmp_path):
    """With EP > 1 megatron-core gives the expert parameters an optimizer of their own (at EP 1 they
    share the dense one): the checkpoint's optimizer state, keyed by parameter name alone, moves
    between the two. Saved at EP2, resumed in one process, and the reverse (the second step shows
    Adam's carried state). (Stages move in the TP2 x PP2 case; 2 ranks here, not 4, for CI time.)"""
    _assert_reshards(parity_setup, tmp_path, MOE, EP2, nproc=2, saved_at=1, iters=2)


def test_distributed_optimizer_checkpoint_reshards_to_one_process_and_back(parity_setup, tmp_path):
    """The distributed optimizer's state (sharded over DP2, with fp32 master weights) resumes in one
    process's plain optimizer (none: the weights are the masters), and the reverse, into a
    distributed optimizer that has not stepped when it loads (torch's Adam has no state then)."""
    _assert_reshards(parity_setup, tmp_path, DENSE, DISTOPT, nproc=2, saved_at=1, iters=2)


def test_checkpoints_move_between_two_split_layouts(parity_setup, tmp_path):
    """Neither side one process: saved at PP2 x VPP2 under the joint schedule, resumed at CP2 under
    megatron-core's (layers, stages and the sequence split all change), continuing the one-process
    run. (Weights alone loaded under another layout: tests/checkpoint/test_convert_hf_tool.py.)"""
    run, iters, saved_at = parity_setup.run, 4, 2
    schedule = (f"train.iters={iters}", f"checkpoint.save_interval={saved_at}")
    single = run(DENSE, tmp_path / "one", *schedule)
    run(DENSE, tmp_path / "pp", *schedule, "parallel.pp=2", "parallel.vpp=2", "pipeline.schedule=joint", nproc=2)
    checkpoint = f"checkpoint.load={tmp_path / 'pp' / 'checkpoints' / f'iter_{saved_at:07d}'}"
    resumed = run(DENSE, tmp_path / "cp", f"train.iters={iters}", checkpoint, "parallel.cp=2", nproc=2)
    assert_same_run(single[saved_at:], resumed, rel=1e-5)
