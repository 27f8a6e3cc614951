"""Damaged checkpoints: each piece missing or broken is one line naming the file, found before
anything is built; a root's damaged newest checkpoint falls back to the one before it.

Each test damages a copy of the tiny checkpoint root ``saved`` (tests/checkpoint/conftest.py).
"""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from megaomni.checkpoint.check import CheckpointError, find_checkpoint
from tests.checkpoint.conftest import NEWEST, OLDER
from tests.conftest import TINY_CONFIG, load_script


@pytest.fixture
def root(saved, tmp_path) -> str:
    """A copy of the saved root, to damage."""
    return shutil.copytree(saved, str(tmp_path / "checkpoints"))


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path: str) -> None:
    with open(path, "r+b") as f:
        f.write(bytes(range(256)) * (os.path.getsize(path) // 256))


def _distcp(directory: str) -> str:
    return os.path.join(directory, sorted(n for n in os.listdir(directory) if n.endswith(".distcp"))[0])


DAMAGES = {
    "common.pt deleted": (lambda d: os.remove(os.path.join(d, "common.pt")), "common.pt: missing"),
    "common.pt truncated": (lambda d: _truncate(os.path.join(d, "common.pt")), "common.pt: unreadable ("),
    "distcp truncated": (lambda d: _truncate(_distcp(d)), "__0_0.distcp: truncated ("),
    "distcp garbled": (lambda d: _garble(_distcp(d)), "__0_0.distcp: garbled (no saved item at byte 0, where the "
                                                      "index puts "),
    "distcp deleted": (lambda d: os.remove(_distcp(d)), "__0_0.distcp: missing"),
    "index garbled": (lambda d: _garble(os.path.join(d, ".metadata")), ".metadata: unreadable ("),
    "rng missing": (lambda d: shutil.rmtree(os.path.join(d, "rng")), "rng/: missing (each rank's RNG state)"),
    "rng truncated": (lambda d: _truncate(os.path.join(d, "rng", "rank_00000.pt")), "rng/rank_00000.pt: unreadable ("),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_iteration_directory_is_one_line_naming_the_file(root, damage):
    spoil, message = DAMAGES[damage]
    newest = os.path.join(root, NEWEST)
    spoil(newest)
    with pytest.raises(CheckpointError) as err:
        find_checkpoint(newest, world_size=1)
    problem = str(err.value).removeprefix(f"checkpoint.load={newest}: ")
    assert problem.startswith(message) and "\n" not in problem, str(err.value)
    # From the root: the checkpoint before it, and what was passed over.
    assert find_checkpoint(root, world_size=1) == (os.path.join(root, OLDER), [f"{NEWEST}/{problem}"])


def test_rng_states_are_needed_only_by_the_world_size_that_saved_them(root):
    newest = os.path.join(root, NEWEST)
    shutil.rmtree(os.path.join(newest, "rng"))
    assert find_checkpoint(newest, world_size=2) == (newest, [])  # re-seeded: not read


def test_latest_naming_an_absent_iteration_falls_back(root, caplog):
    from megaomni.checkpoint.dist_ckpt import resolve_checkpoint

    shutil.rmtree(os.path.join(root, NEWEST))
    with caplog.at_level(logging.WARNING, logger="megaomni.checkpoint"):
        assert resolve_checkpoint(root, world_size=1) == os.path.join(root, OLDER)
    assert [r.getMessage() for r in caplog.records] == [
        f"resuming from {os.path.join(root, OLDER)}, the newest whole checkpoint: passed over {NEWEST}: absent "
        "(named by latest)"]


def test_no_whole_checkpoint_left(root):
    for name in (NEWEST, OLDER):
        os.remove(os.path.join(root, name, "common.pt"))
    with pytest.raises(CheckpointError, match=rf"^checkpoint.load={root}: no whole checkpoint \({NEWEST}/common.pt: "
                                              rf"missing; {OLDER}/common.pt: missing\)$"):
        find_checkpoint(root)


def test_a_data_directory_is_not_a_checkpoint(toy_data):
    with pytest.raises(CheckpointError) as err:
        find_checkpoint(toy_data)
    assert str(err.value) == (f"checkpoint.load={toy_data}: a data directory (*.tar shards), not a checkpoint; set it "
                              "to a checkpoint directory (iter_N) or the folder holding `latest`")


def test_the_entry_point_says_so_in_one_line_before_building_anything(root, toy_data, tmp_path, capsys):
    """Through pretrain_omni.py's main: exit code 2, one line, no traceback (validation runs before
    any process group, model or data loader exists)."""
    newest = os.path.join(root, NEWEST)
    _truncate(os.path.join(newest, "common.pt"))
    code = load_script("pretrain_omni.py").main([
        "--config", TINY_CONFIG, f"data.path={toy_data}", f"train.output_dir={tmp_path / 'run'}",
        f"checkpoint.load={newest}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"config error: checkpoint.load={newest}: common.pt: unreadable (")
    assert err.count("\n") == 1 and not os.path.exists(tmp_path / "run")
