"""Every parallel layout trains exactly like one process (CPU, gloo, fp32), and is the layout asked for.

Each layout is a real ``pretrain_omni.py`` run (torchrun, 2, 4 or 8 ranks, with the parity probe)
from the same initial weights as the single-process reference. ``ParitySetup.check_layout``: each
rank's process groups, parameters and encoder calls are the layout's; the loss, answer NLL and
float64 grad norm of each of its 3 iterations (``metrics.jsonl``, the probe) match the reference
within ``REL`` / ``NORM_REL`` (tests/parallel/layouts.py says why that much).
"""

from __future__ import annotations

import pytest

from tests.parallel.layouts import CASES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model, nproc, overrides", CASES)
def test_layout_matches_single_process(model, nproc, overrides, parity_setup, tmp_path):
    parity_setup.check_layout(model, tmp_path / "run", overrides, nproc)
