"""Saving: ``checkpoint.keep_last`` removes the older checkpoints, and a full disk is one line with
the partial ``iter_N.tmp`` removed. In process, the tiny model (tests/training/test_freeze.py)."""

from __future__ import annotations

import errno
import os

import pytest

from megaomni.checkpoint.check import CheckpointError, iterations


@pytest.fixture(scope="module")
def state(megatron_cpu):
    from tests.training.steps import small_state

    return small_state()[1]


def _save(root, iteration: int, state, **kwargs) -> str:
    from megaomni.checkpoint.dist_ckpt import save_checkpoint

    return save_checkpoint(str(root), iteration, state.chunks, state.optimizer, state.scheduler, common={}, **kwargs)


def test_keep_last_removes_all_but_the_newest(state, tmp_path):
    _save(tmp_path, 9, state)  # after the one `latest` will name (a run resumed from an earlier one): kept
    for iteration in (1, 2, 3, 4):
        _save(tmp_path, iteration, state, keep_last=2)
        assert (tmp_path / "latest").read_text() == f"iter_{iteration:07d}"
    assert iterations(str(tmp_path)) == ["iter_0000009", "iter_0000004", "iter_0000003"]
    _save(tmp_path, 5, state, keep_last=1)
    assert iterations(str(tmp_path)) == ["iter_0000009", "iter_0000005"]


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(state, tmp_path, monkeypatch):
    from megaomni.checkpoint import dist_ckpt

    _save(tmp_path, 1, state)

    def disk_full(state_dict, directory, **kwargs):
        with open(os.path.join(directory, "__0_0.distcp"), "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dist_ckpt.dist_checkpointing, "save", disk_full)
    final = os.path.join(tmp_path, "iter_0000002")
    with pytest.raises(CheckpointError) as err:
        _save(tmp_path, 2, state)
    assert str(err.value) == f"no space left on device while saving {final}"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "latest"]
    assert (tmp_path / "latest").read_text() == "iter_0000001"
