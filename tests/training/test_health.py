"""Training health: a collapsed model and a loss spike stop the run; a healthy curve, the toy run's
start at the uniform guess and warm-up near it do not."""

from __future__ import annotations

import json
import math
import os

import pytest

from megaomni.training.health import SPIKE_WINDOW, HealthCheck, UnhealthyRun
from tests.conftest import read_metrics, run_pretrain

VOCAB = 192  # the toy tokenizer's, padded
UNIFORM = math.log(VOCAB)


def _run(check: HealthCheck, losses, grad_norms=None) -> int:
    """The iteration the check stops at (0: it never does)."""
    for iteration, loss in enumerate(losses, 1):
        try:
            check.check(iteration, loss, 1.0 if grad_norms is None else grad_norms[iteration - 1])
        except UnhealthyRun:
            return iteration
    return 0


def test_a_zero_grad_norm_or_the_uniform_loss_for_n_steps_is_a_collapse():
    # The toy run at train.lr=1e6 (warm-up 0): iteration 1 trains, then the model sits at ln(vocab).
    collapsed = [5.2572469, *(UNIFORM + d for d in (8e-8, -2e-7, -2e-8, 2e-7, 7e-8))]
    assert _run(HealthCheck(VOCAB, 3, 0.0, 0), collapsed, [3.96, 0, 0, 0, 0, 0]) == 4
    assert _run(HealthCheck(VOCAB, 3, 0.0, 0), collapsed, [3.96, 1, 1, 1, 1, 1]) == 4  # the loss alone
    assert _run(HealthCheck(VOCAB, 3, 0.0, 0), [4.0, 3.0, 2.0, 2.5], [0, 0, 0, 1]) == 3  # the grad norm alone
    # Consecutive only; and 0 turns the check off.
    assert _run(HealthCheck(VOCAB, 3, 0.0, 0), [4.0] * 6, [0, 0, 1, 0, 0, 1]) == 0
    assert _run(HealthCheck(VOCAB, 0, 0.0, 0), collapsed, [0] * 6) == 0


def test_warm_up_at_the_uniform_guess_is_not_a_collapse():
    # A zero-initialised output layer starts at ln(vocab), and warm-up's small rates keep it there.
    start = [UNIFORM] * 10 + [UNIFORM - 0.1 * i for i in range(1, 6)]
    assert _run(HealthCheck(VOCAB, 3, 0.0, warmup_iters=10), start) == 0
    assert _run(HealthCheck(VOCAB, 3, 0.0, warmup_iters=0), start) == 3


def test_a_spike_over_k_times_the_recent_mean_stops():
    curve = [1.0 + 0.1 * (i % 3) for i in range(SPIKE_WINDOW)]  # mean 1.095
    assert _run(HealthCheck(VOCAB, 20, 4.0, 0), [*curve, 4.3]) == 0
    assert _run(HealthCheck(VOCAB, 20, 4.0, 0), [*curve, 4.5]) == SPIKE_WINDOW + 1
    assert _run(HealthCheck(VOCAB, 20, 0.0, 0), [*curve, 1e3]) == 0
    assert _run(HealthCheck(VOCAB, 20, 4.0, 0), [10.0, 100.0]) == 0  # no window yet


def test_the_defaults_pass_the_toy_run():
    """The toy recipe's 200 iterations (tests/training/toy_curve.json) trip neither the default
    collapse check nor a spike factor of 3: their largest loss is 1.17x the mean of the 20 before."""
    with open(os.path.join(os.path.dirname(__file__), "toy_curve.json")) as f:
        curve = json.load(f)
    assert len(curve["loss"]) == 200
    assert _run(HealthCheck(VOCAB, 20, 3.0, 10), curve["loss"], curve["grad_norm"]) == 0
    assert _run(HealthCheck(VOCAB, 20, 1.15, 10), curve["loss"], curve["grad_norm"]) > 0  # the control


@pytest.mark.slow
def test_a_collapsed_run_stops_with_exit_3(toy_data, tmp_path):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path}", "train.iters=20", "train.lr=1e6",
                        "train.warmup_iters=0", "train.collapse_steps=3", "checkpoint.save_last=false")
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the model has collapsed" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    records = read_metrics(str(tmp_path))
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert all(abs(r["loss"] - UNIFORM) < 1e-5 for r in records[1:])
