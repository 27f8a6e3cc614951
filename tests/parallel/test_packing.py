"""Packing is exact: packed steps train like right-padded ones (per-token loss, attention and
positions inside each sample), under pipeline and context parallelism too; dynamic steps (a
token budget per step, micro-batches varying per rank) train alike under any data-parallel size."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import DENSE, PADDED, assert_same_run

pytestmark = pytest.mark.slow


# CP2 runs packed rows in tests/parallel/test_layouts.py.
@pytest.mark.parametrize("nproc, layout", [(1, ()), (2, ("parallel.pp=2",))], ids=["single", "pp2"])
def test_packed_steps_equal_padded_steps(parity_setup, tmp_path, nproc, layout):
    padded = parity_setup.run(DENSE, tmp_path / "padded", *PADDED)
    packed = parity_setup.run(DENSE, tmp_path / "packed", *layout, nproc=nproc)
    assert_same_run(padded, packed, rel=1e-5)
    assert all(r["micro_batches"] >= 4 and r["padding"] < 0.3 for r in packed)


def test_dynamic_steps_equal_under_data_parallelism(parity_setup, tmp_path):
    budget = ("data.global_batch_tokens=600",)
    single = parity_setup.run(DENSE, tmp_path / "dp1", *budget)
    double = parity_setup.run(DENSE, tmp_path / "dp2", *budget, "parallel.distributed_optimizer=true", nproc=2)
    assert_same_run(single, double, rel=1e-5)
    # Steps hold as many samples as fit the budget: their token counts vary, none exceeds it.
    assert len({r["tokens"] for r in single}) > 1 and all(r["tokens"] <= 600 for r in single)
    # Both ranks report the step's balance (tests/data/test_packed_loader.py checks its quality).
    assert all(r["dp_imbalance_after"] >= 1.0 and r["dp_imbalance_before"] >= 1.0 for r in double)
