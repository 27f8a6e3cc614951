"""Every parallel layout trains exactly like one process (CPU, gloo, fp32).

Each layout is a real ``pretrain_omni.py`` run (torchrun, 2, 4 or 8 ranks) from the same initial
weights as the single-process reference; the loss and grad norm of each of its 3 iterations
(``metrics.jsonl``) must match the reference within 1e-5 relative.
"""

from __future__ import annotations

import pytest

from tests.parallel.layouts import CASES, assert_same_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, nproc, overrides", CASES)
def test_layout_matches_single_process(model, nproc, overrides, parity_setup, tmp_path):
    records = parity_setup.run(model, tmp_path / "run", *overrides, nproc=nproc)
    assert_same_run(parity_setup.reference(model), records, rel=1e-5)
