"""``logging.profile_start``: the profiled iterations leave a Chrome trace that loads as JSON with
the run's operators in it, and a summary naming the iterations, their wall time and the busy share."""

from __future__ import annotations

import json
import re

from tests.conftest import run_pretrain


def test_profiled_iterations_leave_a_trace_and_a_summary(toy_data, tmp_path):
    proc = run_pretrain(f"data.path={toy_data}", f"train.output_dir={tmp_path}", "train.iters=3",
                        "train.warmup_iters=1", "logging.profile_start=2", "logging.profile_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "profile" / "rank_00000.json") as f:
        names = {event.get("name") for event in json.load(f)["traceEvents"]}
    assert {"aten::mm", "aten::scaled_dot_product_attention"} & names
    summary = (tmp_path / "profile" / "summary_rank_00000.txt").read_text()
    first = summary.splitlines()[0]
    match = re.fullmatch(r"iterations 2-3: ([\d.]+) s wall, CPU ops ([\d.]+) s \((\d+)% of it\)", first)
    assert match and 0 < float(match[2]) and float(match[1]) > 0, first
    assert "aten::" in summary
