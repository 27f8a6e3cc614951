"""benchmarks/build_bench.py on the tiny recipe: both builds (megatron-core's draws kept, and
skipped) run and give the same LLM weights, byte for byte."""

from __future__ import annotations

import json

from tests.conftest import TINY_CONFIG, load_script


def test_both_builds_run_and_give_the_same_weights(megatron_cpu, tmp_path):
    load_script("benchmarks/report.py")  # build_bench imports it by name
    bench = load_script("benchmarks/build_bench.py")
    result = bench.main(["--config", TINY_CONFIG, "--vocab", "256", "--repeat", "1", "--out", str(tmp_path)])
    assert result["weights_same"] and result["llm_parameter_tensors"] > 0
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())
    (path,) = tmp_path.glob("build_bench_tiny_omni_*.json")
    assert json.loads(path.read_text())["speedup"] == result["speedup"]
