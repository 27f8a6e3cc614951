"""``checkpoint.async_save``: checkpoints written while training goes on are the synchronous ones,
bit for bit, and resume the run exactly; a full disk is one line with the partial directory
removed; a kill -9 of the trainer during a save, background or not, leaves no process of its own
running (writers, their worker, megatron-core's Manager and multiprocessing's resource tracker)
and no partial checkpoint named ``latest``."""

from __future__ import annotations

import errno
import functools
import os
import signal
import time

import pytest
import torch

from megaomni.checkpoint.check import SaveError, iterations, load_common
from tests.conftest import read_metrics, run_pretrain, saved_tensors, start_pretrain
from tests.training.test_preemption import _wait_for_lines

SLOW_WRITES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow_writes.py")
COMMON = ("train.iters=6", "train.warmup_iters=1", "checkpoint.save_interval=2", "logging.log_interval=100")


def _run(toy_data, out, *overrides) -> list[dict]:
    done = run_pretrain(f"data.path={toy_data}", *COMMON, f"train.output_dir={out}", *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_metrics(str(out))


@pytest.mark.slow
def test_background_saves_are_the_synchronous_ones_and_resume_the_run(toy_data, tmp_path):
    sync = _run(toy_data, tmp_path / "sync")
    background = _run(toy_data, tmp_path / "async", "checkpoint.async_save=true", "checkpoint.keep_last=2")
    root, reference = tmp_path / "async" / "checkpoints", tmp_path / "sync" / "checkpoints"
    assert (root / "latest").read_text() == "iter_0000006"
    assert iterations(str(root)) == ["iter_0000006", "iter_0000004"]  # keep_last=2, applied once written
    for name in ("iter_0000004", "iter_0000006"):
        ours, theirs = saved_tensors(root / name, tmp_path), saved_tensors(reference / name, tmp_path)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), name
        assert load_common(str(root / name))["data"] == load_common(str(reference / name))["data"]
        assert torch.equal(torch.load(root / name / "rng" / "rank_00000.pt")["cpu"],
                           torch.load(reference / name / "rng" / "rank_00000.pt")["cpu"])
    assert [r["loss"] for r in background] == [r["loss"] for r in sync]  # training itself unchanged
    for records in (sync, background):  # the save's iteration records how long training waited for it
        assert [r["iteration"] for r in records if "save_blocked_s" in r] == [2, 4, 6]
        assert all(r["save_blocked_s"] > 0 for r in records if "save_blocked_s" in r)

    resumed = _run(toy_data, tmp_path / "resumed", f"checkpoint.load={root / 'iter_0000004'}")
    assert [r["iteration"] for r in resumed] == [5, 6]
    for ours, theirs in zip(resumed, sync[4:]):
        for key in ("loss", "grad_norm", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (key, ours, theirs)


def test_the_last_synchronous_save_waits_for_the_background_one(megatron_cpu, tmp_path, monkeypatch):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megaomni.checkpoint.dist_ckpt import save_checkpoint
    from megaomni.training.async_saves import AsyncSaves
    from tests.training.steps import small_state

    state = small_state()[1]
    write = filesystem_async._write_item

    @functools.wraps(write)  # megatron-core reads its signature
    def slow_write(*args, **kwargs):  # still being written when the next save begins
        if not slowed:  # once per writer process (each forks with it empty)
            slowed.append(time.sleep(2))
        return write(*args, **kwargs)

    slowed: list = []

    monkeypatch.setattr(filesystem_async, "_write_item", slow_write)
    with AsyncSaves(enabled=True, last_iteration=3) as saves:
        for iteration in (2, 3):
            save_checkpoint(str(tmp_path), iteration, state.chunks, state.optimizer, state.scheduler, common={},
                            background=saves.background(iteration))
    assert (tmp_path / "latest").read_text() == "iter_0000003"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000002", "iter_0000003", "latest"]


@pytest.mark.parametrize("background", [True, False], ids=["async", "sync"])
def test_a_full_disk_in_the_writers_is_one_line_and_leaves_no_partial_checkpoint(
        megatron_cpu, tmp_path, monkeypatch, background):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megaomni.checkpoint.dist_ckpt import save_checkpoint
    from megaomni.training.async_saves import AsyncSaves
    from tests.training.steps import small_state

    state = small_state()[1]

    def save(iteration: int, saves=None) -> str:
        return save_checkpoint(str(tmp_path), iteration, state.chunks, state.optimizer, state.scheduler, common={},
                               background=saves)

    save(1)

    def disk_full(*args, **kwargs):  # in the forked writers: part of a file, then no room
        next(a for a in args if hasattr(a, "write")).write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filesystem_async, "_write_item", disk_full)
    final = os.path.join(tmp_path, "iter_0000002")
    with AsyncSaves(enabled=background, last_iteration=10) as saves, pytest.raises(SaveError) as err:
        save(2, saves.background(2))
        assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "iter_0000002.tmp", "latest"]  # being written
        saves.wait()
    assert str(err.value) == f"no space left on device while saving {final}"
    assert sorted(os.listdir(tmp_path)) == ["iter_0000001", "latest"]
    assert (tmp_path / "latest").read_text() == "iter_0000001"


def test_an_exception_of_one_rank_drops_the_background_save_and_its_processes(megatron_cpu, tmp_path, monkeypatch):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from megaomni.checkpoint.dist_ckpt import save_checkpoint
    from megaomni.training.async_saves import AsyncSaves
    from tests.training.steps import small_state

    state = small_state()[1]
    monkeypatch.setattr(filesystem_async, "_write_item", lambda *args, **kwargs: time.sleep(600))  # in the writers
    with pytest.raises(KeyError), AsyncSaves(enabled=True, last_iteration=10) as saves:
        save_checkpoint(str(tmp_path), 2, state.chunks, state.optimizer, state.scheduler, common={}, background=saves)
        worker = saves._queue.async_calls[0].async_caller.process.pid
        ends = time.monotonic() + 30
        while time.monotonic() < ends and not _descendants(worker):  # its writers, started
            time.sleep(0.01)
        tree = [worker, *_descendants(worker)]
        assert len(tree) > 1
        raise KeyError("a failure on this rank alone: no collective may run")
    ends = time.monotonic() + 10
    while time.monotonic() < ends and any(_running(p) for p in tree):
        time.sleep(0.05)
    assert not [p for p in tree if _running(p)]
    assert os.listdir(tmp_path) == ["iter_0000002.tmp"]  # never renamed, no `latest`


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def _descendants(pid: int) -> list[int]:
    children = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == pid]
    return children + [d for child in children for d in _descendants(child)]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.mark.slow
@pytest.mark.parametrize("background", [True, False], ids=["async", "sync"])
def test_kill_9_during_a_save_leaves_no_process_and_no_partial_latest(toy_data, tmp_path, background):
    out = tmp_path / "run"
    with open(tmp_path / "run.log", "w") as log:
        proc = start_pretrain(f"data.path={toy_data}", *COMMON, f"train.output_dir={out}",
                              f"checkpoint.async_save={str(background).lower()}", script=SLOW_WRITES,
                              stdout=log, stderr=log)
        try:
            ends, tree = time.monotonic() + 300, []
            # Writers are forks of the trainer (same command line), sleeping before they write; a
            # background save's trainer trains on meanwhile.
            while time.monotonic() < ends and proc.poll() is None:
                tree = _descendants(proc.pid)
                writing = sum(_cmdline(p) == _cmdline(proc.pid) for p in tree) >= (2 if background else 1)
                trained_on = not background or (out / "metrics.jsonl").is_file() and len(read_metrics(str(out))) >= 3
                if writing and trained_on:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("no save being written: " + (tmp_path / "run.log").read_text()[-3000:])
            tree = _descendants(proc.pid)
            assert any(b"resource_tracker" in _cmdline(p) for p in tree)  # what used to be left behind
            assert any(b"spawn_main" in _cmdline(p) for p in tree)  # megatron-core's Manager
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
    ends = time.monotonic() + 10
    while time.monotonic() < ends and any(_running(p) for p in tree):
        time.sleep(0.1)
    left = {p: _cmdline(p)[:120] for p in tree if _running(p)}
    for pid in left:  # not to leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, left
    checkpoints = out / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["iter_0000002.tmp"]  # never renamed, no `latest`


@pytest.mark.slow
def test_sigterm_waits_for_the_background_save(toy_data, tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "run.log", "w") as log:
        proc = start_pretrain(f"data.path={toy_data}", "train.iters=40", "train.warmup_iters=1",
                              "checkpoint.save_interval=1", "checkpoint.async_save=true", f"train.output_dir={out}",
                              stdout=log, stderr=log)
        _wait_for_lines(out / "metrics.jsonl", 3, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143, (tmp_path / "run.log").read_text()[-3000:]
    n = len(read_metrics(str(out)))
    # The step's own save, begun in the background, written and named `latest` before the exit.
    assert sorted(os.listdir(out / "checkpoints"))[-2:] == [f"iter_{n:07d}", "latest"]
    assert (out / "checkpoints" / "latest").read_text() == f"iter_{n:07d}"
    assert not [name for name in os.listdir(out / "checkpoints") if name.endswith(".tmp")]
    assert f"saved {out / 'checkpoints' / f'iter_{n:07d}'}" in (tmp_path / "run.log").read_text()
