"""The MoE experts' grouped GEMM (megaomni.ops.grouped_gemm): every implementation this machine
has, forward and both gradients, against the loop in float64, with an expert that gets no
tokens (zero weight gradient) and rows too narrow for the grouped kernels (the loop takes them).
CPU: loop and torch._grouped_mm (fp32, bf16); CUDA (the device machine): torch and the cuBLAS
extension too, bf16."""

from __future__ import annotations

import os

import pytest
import torch

from megaomni.config import ConfigError
from megaomni.ops.grouped_gemm import grouped_linear, loop_grouped_linear, resolve, stacked

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# dtype -> (rtol, atol) against float64: fp32 rounding, bf16's 8-bit mantissa over K <= 64.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 5e-2)}


def _available(device: str, dtype: torch.dtype) -> list[str]:
    names = []
    for impl in ("loop", "torch", "cuda"):
        try:
            names.append(resolve(impl, torch.device(device), dtype, num_groups=4))
        except ConfigError:
            pass
    return names


CASES = [pytest.param(device, dtype, impl, id=f"{device}-{str(dtype)[6:]}-{impl}")
         for device in DEVICES for dtype in (torch.float32, torch.bfloat16)
         for impl in _available(device, dtype)]


@pytest.mark.parametrize("width", [(32, 48), (5, 7)], ids=["aligned", "narrow"])
@pytest.mark.parametrize("device, dtype, impl", CASES)
def test_matches_the_loop_in_float64(device, dtype, impl, width):
    d_in, d_out = width
    gen = torch.Generator().manual_seed(0)
    sizes = [5, 0, 16, 3]  # expert 1 gets no tokens
    offsets = torch.tensor(sizes).cumsum(0)
    x64 = torch.randn(sum(sizes), d_in, dtype=torch.float64, generator=gen)
    w64 = [torch.randn(d_out, d_in, dtype=torch.float64, generator=gen) / d_in**0.5 for _ in sizes]
    grad64 = torch.randn(sum(sizes), d_out, dtype=torch.float64, generator=gen)

    x = x64.to(device, dtype).requires_grad_()
    weights = [w.to(device, dtype).requires_grad_() for w in w64]
    y = grouped_linear(x, weights, offsets, impl)
    grads = torch.autograd.grad(y, [x, *weights], grad64.to(device, dtype))

    # The reference from the same rounded inputs, in float64.
    x_ref = x.detach().double().cpu().requires_grad_()
    w_ref = [w.detach().double().cpu().requires_grad_() for w in weights]
    y_ref = loop_grouped_linear(x_ref, w_ref, offsets)
    ref_grads = torch.autograd.grad(y_ref, [x_ref, *w_ref], grad64.to(dtype).double())
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(y.double().cpu(), y_ref, rtol=rtol, atol=atol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=atol)
    assert torch.count_nonzero(grads[2]) == 0  # the expert without tokens


def test_weights_back_to_back_stack_as_a_view_and_others_as_a_copy():
    buffer = torch.randn(4, 6, 5)
    in_order, backwards, gapped = list(buffer.unbind(0)), list(buffer.unbind(0))[::-1], [buffer[0], buffer[2]]
    apart = [w.clone() for w in in_order]
    for weights, view in ((in_order, True), (backwards, False), (gapped, False), (apart, False), (in_order[1:], True)):
        got = stacked(weights)
        assert torch.equal(got, torch.stack(weights))
        assert (got.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()) is view
    # The first weight's storage must hold them all: a view never reads past it.
    assert stacked([buffer[3], buffer[3]]).untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()


def test_auto_and_explicit_choices():
    cpu = torch.device("cpu")
    assert resolve("auto", cpu, torch.float32, 16) == "torch"  # torch._grouped_mm runs on the CPU
    assert resolve("auto", cpu, torch.float64, 16) == "loop"  # ... but not in float64
    assert resolve("auto", cpu, torch.float32, 8) == "loop"  # few experts: the loop measured faster
    assert resolve("torch", cpu, torch.float32, 8) == "torch"
    with pytest.raises(ConfigError) as err:
        resolve("cuda", cpu, torch.bfloat16, 16)
    assert str(err.value).startswith("model.llm.moe.grouped_gemm=cuda: not available for torch.bfloat16 on cpu")
    with pytest.raises(ConfigError, match="grouped_gemm=torch: not available for torch.float64"):
        resolve("torch", cpu, torch.float64, 16)


def test_benchmark_quick_runs_and_agrees(tmp_path):
    """benchmarks/grouped_gemm_bench.py --quick on the CPU: loop and torch timed, equal within bf16."""
    from tests.conftest import load_script

    slug = load_script("benchmarks/report.py").slug
    result = load_script("benchmarks/grouped_gemm_bench.py").main(
        ["--quick", "--repeat", "1", "--warmup", "0", "--out", str(tmp_path)])
    rows = {(r["counts"], r["impl"]): r for r in result["results"]}
    assert set(rows) == {(c, i) for c in ("uniform", "skewed") for i in ("loop", "torch", "cuda")}
    assert rows[("skewed", "torch")]["empty_experts"] == 2
    for counts in ("uniform", "skewed"):
        assert "skipped" in rows[(counts, "cuda")]  # a CPU run: no CUDA extension
        assert rows[(counts, "torch")]["error_out"] < 1e-2 and rows[(counts, "torch")]["error_grad_fc1"] < 1e-2
    assert os.listdir(tmp_path) == [f"grouped_gemm_quick_{slug(result['device'])}.json"]
