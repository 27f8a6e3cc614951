"""Preemption: SIGTERM / SIGINT stop the run at the end of a step, every rank agreeing, with a
checkpoint from which the run continues as if never stopped."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch.multiprocessing as mp

from megaomni.platform.distributed import _free_port
from megaomni.training.preemption import Preempted, StopSignals
from tests.conftest import read_metrics, run_pretrain, start_pretrain


class _Saves:
    """A stand-in for the trainer's save: records the iterations, optionally signalled meanwhile."""

    def __init__(self, signal_during: int = 0):
        self.iterations, self.signal_during = [], signal_during

    def __call__(self, iteration: int) -> str:
        if self.signal_during:
            os.kill(os.getpid(), self.signal_during)
        self.iterations.append(iteration)
        return f"ckpt/iter_{iteration:07d}"


def test_a_signal_stops_at_the_step_end_with_a_save(megatron_cpu):
    save = _Saves(signal_during=signal.SIGINT)  # a second signal, during the save: it completes
    before = [signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)]
    with StopSignals("cpu", 0.0) as signals:
        signals.stop_if_signalled(1, save, "ckpt")  # no signal: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted) as stop:
            signals.stop_if_signalled(2, save, "ckpt")
    assert save.iterations == [2] and stop.value.exit_code == 143
    assert str(stop.value) == "stopped by SIGTERM at iteration 2; saved ckpt/iter_0000002; resume with " \
                              "checkpoint.load=ckpt"
    assert [signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)] == before  # restored


def test_a_step_that_saved_already_is_not_saved_twice(megatron_cpu):
    save = _Saves()
    with StopSignals("cpu", 0.0) as signals:
        signals.timed_save(save, 5)  # the step's interval save
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Preempted) as stop:
            signals.stop_if_signalled(5, save, "ckpt")
    assert save.iterations == [5] and stop.value.exit_code == 130


def test_past_the_grace_time_it_exits_unsaved(megatron_cpu):
    save = _Saves()
    with StopSignals("cpu", 30.0) as signals:
        signals.save_s = 45.0  # the last save took longer than the grace time
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match=r"iteration 7; not saved: the save would end about 45 s after the "
                                             r"signal, past train.exit_grace_s=30"):
            signals.stop_if_signalled(7, save, "ckpt")
    assert save.iterations == []


def _rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from megaomni.config import ConfigError, OmniConfig
    from megaomni.training.run_dir import check_run_dirs

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    # Only rank 0 sees an earlier run (as on a node of its own): both refuse.
    cfg = OmniConfig()
    cfg.train.output_dir = os.path.join(out, "run" if rank == 0 else f"elsewhere{rank}")
    try:
        check_run_dirs(cfg)
    except ConfigError:
        open(os.path.join(out, f"refused{rank}"), "w").close()
    # Only rank 1 is signalled: both stop at the same step, and both save (a collective).
    save = _Saves()
    with StopSignals("cpu", 0.0) as signals:
        signals.stop_if_signalled(1, save, out)
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        try:
            signals.stop_if_signalled(2, save, out)
        except Preempted as stop:
            open(os.path.join(out, f"stopped{rank}_{stop.exit_code}_{save.iterations}"), "w").close()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_what_one_saw(tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"iteration": 1}\n')
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == \
        ["refused0", "refused1", "stopped0_143_[2]", "stopped1_143_[2]"]


def _wait_for_lines(path, count: int, proc, timeout: float = 300) -> None:
    ends = time.monotonic() + timeout
    while time.monotonic() < ends and proc.poll() is None:
        if os.path.isfile(path):
            with open(path) as f:
                if sum(1 for line in f if line.endswith("\n")) >= count:
                    return
        time.sleep(0.01)
    raise AssertionError(f"{path}: not {count} lines before the run ended or {timeout} s")


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_matches_an_uninterrupted_one(toy_data, tmp_path):
    common = (f"data.path={toy_data}", "train.iters=10", "train.warmup_iters=2", "logging.log_interval=100")
    full = run_pretrain(*common, f"train.output_dir={tmp_path / 'full'}", "checkpoint.save_last=false")
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]

    out = tmp_path / "stopped"
    with open(tmp_path / "stopped.log", "w") as log:
        proc = start_pretrain(*common, f"train.output_dir={out}", stdout=log, stderr=log)
        _wait_for_lines(out / "metrics.jsonl", 2, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 143, (tmp_path / "stopped.log").read_text()[-3000:]
    stopped = read_metrics(str(out))
    n = len(stopped)
    assert 2 <= n < 10
    assert (out / "checkpoints" / "latest").read_text() == f"iter_{n:07d}"  # at the step boundary
    assert f"stopped by SIGTERM at iteration {n}; saved {out / 'checkpoints' / f'iter_{n:07d}'}; resume with " \
           f"checkpoint.load={out / 'checkpoints'}" in (tmp_path / "stopped.log").read_text()

    again = run_pretrain(*common, f"train.output_dir={out}")  # not resuming: refused, nothing touched
    assert again.returncode == 2 and again.stderr.strip() == (
        f"config error: train.output_dir={out} holds an earlier run (metrics.jsonl, checkpoints): resume it with "
        f"checkpoint.load={out / 'checkpoints'}, write over it with train.overwrite=true, or set another "
        "train.output_dir"), again.stdout[-2000:] + again.stderr[-2000:]
    assert read_metrics(str(out)) == stopped

    resumed = run_pretrain(*common, f"train.output_dir={out}", f"checkpoint.load={out / 'checkpoints'}",
                           "checkpoint.save_last=false")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records, reference = read_metrics(str(out)), read_metrics(str(tmp_path / "full"))
    assert [r["iteration"] for r in records] == list(range(1, 11))
    assert records[:n] == stopped  # appended
    for a, b in zip(reference, records):
        for key in ("loss", "grad_norm", "lr", "answer_nll"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a, b)
        assert b["tokens"] == a["tokens"]
