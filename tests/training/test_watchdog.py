"""train.step_timeout_s: a phase that runs past it ends the rank with exit 5, naming where it was."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from megaomni.training.watchdog import EXIT_CODE
from tests.conftest import ROOT, read_metrics, start_pretrain

# A process that names the phase it is in and then spends `sleep` seconds in it.
PHASE = """
import sys, time
from megaomni.training.watchdog import Watchdog
with Watchdog(0.5, 3, lambda: "LLM_F(mb 1, stage 2)") as watchdog:
    watchdog.phase("forward_backward", 7)
    time.sleep(float(sys.argv[1]))
"""


def _run_phase(sleep_s: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PHASE, str(sleep_s)], capture_output=True, text=True, timeout=30,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    return done, time.monotonic() - started


def test_a_phase_past_the_timeout_ends_the_process_naming_it():
    done, took = _run_phase(2.0)
    assert done.returncode == EXIT_CODE, done.stderr
    line = next(line for line in done.stderr.splitlines() if "past train.step_timeout_s" in line)
    assert "rank 3: iteration 7: phase forward_backward (action LLM_F(mb 1, stage 2))" in line
    assert 0.5 <= float(re.search(r"has run ([\d.]+) s", line).group(1)) < 1.0  # polled every 0.05 s
    assert 'File "<string>", line 6 in <module>' in done.stderr  # the main thread's stack: at its sleep
    assert took < 1.9  # ended inside the 2 s sleep, not after it


def test_a_phase_inside_the_timeout_runs_to_its_end():
    done, _ = _run_phase(0.2)
    assert done.returncode == 0 and done.stderr == ""


def _ranks(torchrun: psutil.Process, deadline: float) -> dict[int, psutil.Process]:
    """torchrun's worker processes by RANK, once both have started."""
    while time.monotonic() < deadline:
        ranks = {}
        for child in torchrun.children():
            try:
                env = child.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if "RANK" in env:
                ranks[int(env["RANK"])] = child
        if len(ranks) == 2:
            return ranks
        time.sleep(0.2)
    raise AssertionError("torchrun's two ranks did not start")


@pytest.mark.slow
def test_a_stalled_rank_ends_the_run_with_the_others_phase_named(toy_data, tmp_path):
    timeout_s = 10
    log_path = tmp_path / "out.log"
    with open(log_path, "w") as log:
        proc = start_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path / 'run'}", "train.iters=1000",
                              f"train.step_timeout_s={timeout_s}", "checkpoint.save_last=false", nproc=2,
                              stdout=log, stderr=subprocess.STDOUT)
    torchrun = psutil.Process(proc.pid)
    everyone: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        ranks = _ranks(torchrun, deadline)
        while not (os.path.exists(tmp_path / "run" / "metrics.jsonl") and read_metrics(tmp_path / "run")):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        everyone = torchrun.children(recursive=True)  # the ranks and their data workers
        ranks[1].send_signal(signal.SIGSTOP)  # rank 1 stalls mid-run; rank 0 waits on it in a collective
        stalled = time.monotonic()
        ranks[0].wait(timeout=timeout_s + 20)  # not our child: psutil polls for its end
        took = time.monotonic() - stalled
        # torchrun now SIGTERMs rank 1, which cannot act while stopped (its SIGKILL comes 30 s later).
        ranks[1].kill()
        assert proc.wait(timeout=60) != 0
    finally:
        for p in [torchrun, *everyone]:
            if p.is_running():
                p.kill()
        proc.wait(timeout=30)
    out = log_path.read_text()
    line = next(line for line in out.splitlines() if "[rank 0]" in line and "past train.step_timeout_s" in line)
    phase = re.search(r"rank 0: iteration (\d+): phase (\w+)", line)
    assert phase and int(phase.group(1)) >= 2, line  # a step after the first one's metrics line
    assert phase.group(2) in ("data", "forward_backward", "optimizer", "metrics"), line
    assert took <= timeout_s + 5, (took, line)
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s+exitcode\s*: 5 ", out), out[-3000:]  # torchrun's summary
    time.sleep(2)  # data workers notice their trainer's end within a second
    assert not [p for p in everyone if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
