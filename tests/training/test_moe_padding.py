"""An MoE router's balancing leaves packed rows' padding out (megatron-core's ``padding_mask``):
the aux loss, and with it every gradient, does not depend on how far the rows are padded."""

from __future__ import annotations

import pytest

from tests.conftest import read_metrics, run_pretrain


def test_moe_trains_the_same_on_rows_padded_alone_and_to_the_longest(toy_data, tmp_path):
    """The same samples a step, each row padded to its own length or to the step's longest: equal
    losses and grad norms (float32 sums in another order). A large aux-loss coefficient makes the
    balancing's share of the gradient visible: balanced over the padding too, the grad norms part
    by ~5% (31.03 / 29.59)."""
    runs = {}
    for padding in ("row", "step"):
        proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path / padding}", "train.iters=2",
                            "train.warmup_iters=1", "data.seq_length=64", "data.max_tokens=80",
                            "model.llm.moe.num_experts=4", "model.llm.moe.top_k=2", "model.llm.moe.aux_loss_coeff=1.0",
                            f"data.row_padding={padding}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[padding] = read_metrics(str(tmp_path / padding))
    for alone, longest in zip(runs["row"], runs["step"], strict=True):
        assert alone["padding"] < longest["padding"]
        assert alone["loss"] == pytest.approx(longest["loss"], rel=1e-6)
        assert alone["grad_norm"] == pytest.approx(longest["grad_norm"], rel=1e-5)
