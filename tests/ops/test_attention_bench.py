"""benchmarks/attention_bench.py --quick on the CPU, in-process: the paths that run there (megaomni's
core, SDPA math and CPU-flash per segment batch, eager FlexAttention forward) agree with the float64
reference within the bf16 tolerances, and the result JSON is written."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/attention_bench.py")


def test_quick_cpu_paths_within_tolerance(bench, tmp_path):
    paths = ["megaomni", "megaomni_blockmask", "sdpa_batched[math]", "sdpa_batched[flash]", "flex"]
    result = bench.main(["--quick", "--device", "cpu", "--repeat", "1", "--warmup", "0",
                         "--paths", ",".join(paths), "--out", str(tmp_path)])
    tol = result["tolerance"]
    assert {s["name"] for s in result["shapes"]} == {"vit_mix", "vit_window", "llm"}
    rows = {(r["shape"], r["path"]): r for r in result["results"]}
    assert len(rows) == 3 * len(paths)
    for (shape, path), r in rows.items():
        if path in ("megaomni", "megaomni_blockmask", "sdpa_batched[math]"):  # must run on the CPU
            assert "skipped" not in r, (shape, path, r.get("skipped"))
            assert "backward_skipped" not in r, (shape, path, r["backward_skipped"])
        if "skipped" in r:
            continue
        assert r["rel_err_out"] <= tol["out"], (shape, path, r["err_out"])
        if "backward_skipped" not in r:
            assert r["rel_err_grad"] <= tol["grad"], (shape, path, r["err_grad"])
            assert r["forward_backward_ms"] > 0
        assert r["ok"] and r["forward_ms"] > 0
    assert rows[("vit_mix", "megaomni")]["note"].startswith("today: sdpa")
    assert set(result["fastest_correct"]) == {"vit_mix", "vit_window", "llm"}
    written = [f for f in os.listdir(tmp_path) if f.startswith("attention_bench_quick_")]
    assert len(written) == 1
    with open(tmp_path / written[0]) as f:
        assert json.load(f)["benchmark"] == "attention_bench"


def test_tolerance_catches_a_wrong_mask(bench, monkeypatch):
    """Attending across the segment boundaries (one causal SDPA over the whole row) fails the check."""
    import types

    import torch
    import torch.nn.functional as F

    def across(shape, device, dtype):
        def fn(q, k, v):
            q4, k4, v4 = (x.transpose(0, 1)[None] for x in (q, k, v))
            out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=shape.causal, enable_gqa=True)
            return out[0].transpose(0, 1)
        return fn, "ignores cu_seqlens"

    monkeypatch.setitem(bench.PATHS, "across", across)
    shape = next(s for s in bench.shapes(["llm"], quick=True))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(shape.total, shape.heads, shape.head_dim, generator=gen, dtype=torch.bfloat16)
    k, v = (torch.randn(shape.total, shape.kv_heads, shape.head_dim, generator=gen, dtype=torch.bfloat16)
            for _ in range(2))
    grad = torch.randn_like(q)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    ref = bench.reference(shape, q, k, v, grad)
    args = types.SimpleNamespace(warmup=0, repeat=1)
    wrong = bench.run_path("across", shape, torch.device("cpu"), torch.bfloat16, q, k, v, grad, ref, args)
    right = bench.run_path("megaomni", shape, torch.device("cpu"), torch.bfloat16, q, k, v, grad, ref, args)
    assert right["ok"] and not wrong["ok"]
    assert wrong["rel_err_out"] > 10 * right["rel_err_out"]
