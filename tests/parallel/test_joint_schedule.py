"""The joint encoder-LLM schedule trains exactly like one process (CPU, gloo, fp32).

Same check as ``test_layouts.py`` (3 iterations from shared initial weights, the layout took
effect, loss / answer NLL within ``REL``, the float64 grad norm within ``NORM_REL``, identical
token counts), with every pipeline rank encoding a share of each micro-batch (its encoders ran:
the probe counts their calls); and the baseline policy run by megaomni's executor instead of
megatron-core's schedules.
"""

from __future__ import annotations

import json

import pytest

from tests.parallel.layouts import DENSE, IMPORTED, MOE, WIDE_VOCAB

pytestmark = pytest.mark.slow

# Never the baseline's placement: on these tiny costs the simulator would often pick it.
JOINT = ("pipeline.schedule=joint", "pipeline.joint_fallback=false", "pipeline.timeline_interval=1")
CASES = [
    pytest.param(WIDE_VOCAB, 2, ("parallel.pp=2", *JOINT), id="wide_vocab-pp2"),
    pytest.param(DENSE, 2, ("parallel.pp=2", "parallel.vpp=2", *JOINT), id="dense-pp2_vpp2"),
    pytest.param(DENSE, 4, ("parallel.pp=4", *JOINT), id="dense-pp4"),
    # Two micro-batches per encoder call: one forward and one backward over both shares.
    pytest.param(DENSE, 2, ("parallel.pp=2", "pipeline.encoder_group=2", *JOINT), id="dense-pp2-encoder_group2"),
    # profile_steps=1: iteration 3 is planned on costs fitted to iteration 2's measured actions,
    # which every rank (each TP rank timed its own) must share.
    pytest.param(DENSE, 4, ("parallel.tp=2", "parallel.pp=2", "pipeline.profile_steps=1", *JOINT), id="dense-tp2_pp2"),
    pytest.param(DENSE, 4, ("parallel.pp=2", "parallel.distributed_optimizer=true", "pipeline.profile_steps=1", *JOINT),
                 id="dense-dp2_pp2_distopt"),
    pytest.param(MOE, 2, ("parallel.pp=2", *JOINT), id="moe-pp2"),
    pytest.param(IMPORTED, 2, ("parallel.pp=2", *JOINT), id="imported-pp2"),
    pytest.param(DENSE, 2, ("parallel.pp=2", "parallel.vpp=2", "pipeline.executor=plan",
                            "pipeline.timeline_interval=1"), id="dense-pp2_vpp2-baseline_on_executor"),
]


@pytest.mark.parametrize("model, nproc, overrides", CASES)
def test_joint_matches_single_process(model, nproc, overrides, parity_setup, tmp_path):
    parity_setup.check_layout(model, tmp_path / "run", overrides, nproc)
    # The recorded timeline: every rank computed, and under joint every rank encoded.
    with open(tmp_path / "run" / "timelines" / "iter_0000001.json") as f:
        record = json.load(f)
    timeline = record["timeline"]
    ranks = {e["rank"] for e in timeline["events"]}
    encoding = {e["rank"] for e in timeline["events"] if e["kind"] == "enc_f"}
    assert ranks == set(range(timeline["pp"]))
    if "pipeline.schedule=joint" in overrides:
        assert encoding == ranks
        if "pipeline.encoder_group=2" in overrides:
            calls = [len(a[5]) or 1 for rank in record["plan"]["actions"] for a in rank if a[0] == "enc_f"]
            assert max(calls) == 2, calls
    else:
        assert encoding == {0}
    assert (tmp_path / "run" / "timelines" / "iter_0000001.png").stat().st_size > 1000
