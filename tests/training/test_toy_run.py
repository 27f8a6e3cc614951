"""End to end through the shipped entry point: the toy run learns what only the media can tell,
resuming from a checkpoint continues the same run, and a NaN stops the run cleanly."""

from __future__ import annotations

import pytest

from megaomni.data.stats import text_only_entropy
from tests.conftest import read_metrics, run_pretrain

LEARN_ITERS = 200  # the shipped recipe (examples/configs/tiny_omni.yaml)


def _train(toy_data, out, *overrides):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={out}", *overrides)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return read_metrics(str(out))


@pytest.mark.slow
def test_toy_run_learns_from_media(toy_data, tmp_path):
    floor = text_only_entropy(toy_data)
    assert floor > 1.0  # the answers are genuinely uncertain without the media
    final = {}
    for name, extra in (("media", []), ("blind", ["data.zero_media=true"])):
        records = _train(toy_data, tmp_path / name, f"train.iters={LEARN_ITERS}", *extra)
        assert [r["iteration"] for r in records] == list(range(1, LEARN_ITERS + 1))
        final[name] = sum(r["answer_nll"] for r in records[-10:]) / 10
    # With the media the answers become (nearly) certain; without, the model can only learn the
    # answer prior of each question, i.e. stay near the text-only entropy.
    assert final["media"] < 0.5 * floor, (final, floor)
    assert final["blind"] > 0.8 * floor, (final, floor)


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(toy_data, tmp_path):
    common = ("train.iters=6", "train.warmup_iters=2")
    full = _train(toy_data, tmp_path / "full", *common, "checkpoint.save_interval=3")
    ckpt = tmp_path / "full" / "checkpoints"
    assert (ckpt / "latest").read_text() == "iter_0000006"
    resumed = _train(toy_data, tmp_path / "resumed", *common,
                     f"checkpoint.load={ckpt / 'iter_0000003'}")
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    for a, b in zip(full[3:], resumed):
        # Same data position, optimizer state, LR schedule and RNG: identical up to float noise.
        for key in ("loss", "grad_norm", "lr", "answer_nll"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a, b)
        assert b["tokens"] == a["tokens"]


@pytest.mark.slow
def test_nan_loss_stops_with_message(toy_data, tmp_path):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path}", "train.iters=20",
                        "train.lr=1e30", "train.min_lr=0", "train.warmup_iters=0", "train.clip_grad=0")
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stopping" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_data_parallel_matches_single_process(toy_data, tmp_path):
    """torchrun with 2 ranks splits each global batch; per-token loss normalisation over both
    ranks makes the step identical to one process up to float summation order."""
    common = ("train.iters=3", "train.warmup_iters=1", "checkpoint.save_interval=0")
    single = _train(toy_data, tmp_path / "dp1", *common)
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path / 'dp2'}", *common, nproc=2)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    double = read_metrics(str(tmp_path / "dp2"))
    assert len(double) == 3
    for a, b in zip(single, double):
        for key in ("loss", "grad_norm", "answer_nll"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a, b)
        assert b["tokens"] == a["tokens"]
