"""benchmarks/loss_bench.py on tiny shapes on the CPU: the paths run, and megatron-core's loss and
megaomni's chunked one agree with torch's in float32. (megatron-core's fused loss is left to the
GPU: its pieces compile with inductor, 15 s here.)"""

from __future__ import annotations

from tests.conftest import load_script


def test_every_loss_path_runs_and_agrees(megatron_cpu, tmp_path):
    load_script("benchmarks/report.py")  # loss_bench imports it by name
    bench = load_script("benchmarks/loss_bench.py")
    result = bench.main(["--tokens", "48", "--hidden", "16", "--vocab", "300", "--repeat", "1", "--warmup", "0",
                         "--paths", "megatron,torch,chunked", "--out", str(tmp_path)])
    rows = {r["path"]: r for r in result["results"]}
    assert set(rows) == {"megatron", "torch", "chunked"}
    for path in ("megatron", "chunked"):
        assert max(rows[path]["max_diff"].values()) < 1e-5, rows[path]
    assert list(tmp_path.glob("loss_bench_*.json"))
