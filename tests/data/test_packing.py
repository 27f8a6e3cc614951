"""The packer: the reference has the promised properties (checked here independently of how it
computes them), and the C++ extension gives identical outputs on random inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from megaomni.data import packing
from megaomni.data.packing import balanced_assign, cu_seqlens_and_positions, ffd_pack, pack_copy

needs_ext = pytest.mark.skipif(packing.implementation() != "cpp",
                               reason="megaomni._packing_ext is not built (pip install --no-build-isolation -e .)")
IMPLS = ["python", pytest.param("cpp", marks=needs_ext)]


def lengths_for(seed: int, n: int, budget: int) -> torch.Tensor:
    """Lengths up to 1.5x the budget (some over it), from a small range every other seed (many ties)."""
    g = torch.Generator().manual_seed(seed)
    high = budget * 3 // 2 + 1 if seed % 2 else min(4, budget + 2)
    return torch.randint(0, high, (n,), generator=g)


FFD_CASES = [(seed, n, budget, window)
             for seed, (n, budget, window) in enumerate(itertools.product(
                 (0, 1, 2, 7, 60, 257), (1, 5, 64, 1000), (1, 3, 16, 257, 10_000)))]


# --- first-fit-decreasing ----------------------------------------------------------------------

def check_ffd(lengths: torch.Tensor, budget: int, window: int, bins: torch.Tensor) -> None:
    """``bins`` against the definition, replayed sample by sample in FFD order: over-budget
    samples (and only they) get -1, no bin exceeds the budget, each sample went to the first of
    its window's bins with room at its turn (else to a new bin), bins numbered in creation order."""
    lengths, bins = lengths.tolist(), bins.tolist()
    assert len(bins) == len(lengths)
    next_bin = 0
    for start in range(0, len(lengths), window):
        load: dict[int, int] = {}  # the window's bins, in creation order
        for i in sorted(range(start, min(start + window, len(lengths))), key=lambda i: (-lengths[i], i)):
            if lengths[i] > budget:
                assert bins[i] == -1
                continue
            b = bins[i]
            assert all(budget - load[earlier] < lengths[i] for earlier in load if earlier < b)
            if b not in load:
                assert b == next_bin + len(load), "a new bin takes the next id"
                load[b] = 0
            load[b] += lengths[i]
            assert load[b] <= budget
        next_bin += len(load)
    assert sorted(set(bins) - {-1}) == list(range(next_bin))


@pytest.mark.parametrize("impl", IMPLS)
def test_ffd_properties(impl):
    for seed, n, budget, window in FFD_CASES:
        lengths = lengths_for(seed, n, budget)
        check_ffd(lengths, budget, window, ffd_pack(lengths, budget, window, impl=impl))


@needs_ext
def test_ffd_cpp_equals_reference():
    for seed, n, budget, window in FFD_CASES:
        lengths = lengths_for(seed, n, budget)
        expected = ffd_pack(lengths, budget, window, impl="python")
        assert torch.equal(ffd_pack(lengths, budget, window, impl="cpp"), expected), (seed, n, budget, window)


@pytest.mark.parametrize("impl", IMPLS)
def test_ffd_worked_example_and_edges(impl):
    # Window [5, 3, 8]: 8 opens bin 0, 5 opens bin 1, 3 joins bin 1 (bin 0 has 2 left).
    # Window [2, 9, 1]: 9 opens bin 2, 2 opens bin 3, 1 joins bin 2.
    assert ffd_pack([5, 3, 8, 2, 9, 1], 10, 3, impl=impl).tolist() == [1, 1, 0, 3, 2, 2]
    assert ffd_pack([], 10, 3, impl=impl).dtype == torch.int64
    assert ffd_pack([], 10, 3, impl=impl).numel() == 0
    assert ffd_pack([11, 12, 20], 10, 2, impl=impl).tolist() == [-1, -1, -1]
    assert ffd_pack([10, 10, 4, 6], 10, 4, impl=impl).tolist() == [0, 1, 2, 2]  # exactly the budget fits
    assert ffd_pack([3, 11, 4], 10, 1, impl=impl).tolist() == [0, -1, 1]  # window 1: a bin each
    whole = ffd_pack([4, 7, 3, 6, 2], 10, 5, impl=impl)
    assert torch.equal(ffd_pack([4, 7, 3, 6, 2], 10, 99, impl=impl), whole)  # window >= n: one window
    assert whole.tolist() == [1, 0, 0, 1, 2]


@pytest.mark.parametrize("impl", IMPLS)
def test_ffd_rejects_bad_arguments(impl):
    with pytest.raises(ValueError, match="lengths"):
        ffd_pack([3, -1], 10, 2, impl=impl)
    with pytest.raises(TypeError, match="integers"):
        ffd_pack([3.5], 10, 2)
    with pytest.raises(ValueError, match="budget"):
        ffd_pack([3], 0, 2)
    with pytest.raises(ValueError, match="window"):
        ffd_pack([3], 10, 0)
    with pytest.raises(ValueError, match="impl"):
        ffd_pack([3], 10, 1, impl="fortran")


# --- balanced assignment -----------------------------------------------------------------------

def costs_for(seed: int, n: int) -> torch.Tensor:
    """Lognormal costs, or small integers (many ties) every other seed."""
    g = torch.Generator().manual_seed(seed)
    if seed % 2:
        return torch.randint(0, 5, (n,), generator=g).double()
    return torch.randn(n, generator=g, dtype=torch.float64).mul(1.5).exp()


BALANCE_CASES = [(seed, n, bins, capacity)
                 for seed, (n, bins, capacity) in enumerate(itertools.product(
                     (0, 1, 5, 40, 300), (1, 2, 7, 64), (None, 0, 50, 400)))]


def check_balanced(costs, lengths, num_bins, capacity, bins) -> None:
    """Replay in LPT order: each sample went to the least-loaded bin it fits in (ties: lowest id),
    -1 only when it fits in none; no bin exceeds the capacity."""
    costs, bins = costs.tolist(), bins.tolist()
    load, used = [0.0] * num_bins, [0] * num_bins
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        fits = [b for b in range(num_bins) if capacity is None or used[b] + lengths[i] <= capacity]
        if not fits:
            assert bins[i] == -1
            continue
        assert bins[i] == min(fits, key=lambda b: (load[b], b))
        load[bins[i]] += costs[i]
        used[bins[i]] += 0 if capacity is None else lengths[i]


@pytest.mark.parametrize("impl", IMPLS)
def test_balanced_properties(impl):
    for seed, n, num_bins, capacity in BALANCE_CASES:
        costs = costs_for(seed, n)
        lengths = lengths_for(seed, n, 100)
        kwargs = {} if capacity is None else {"lengths": lengths, "capacity": capacity}
        bins = balanced_assign(costs, num_bins, impl=impl, **kwargs)
        check_balanced(costs, lengths.tolist(), num_bins, capacity, bins)


@needs_ext
def test_balanced_cpp_equals_reference():
    for seed, n, num_bins, capacity in BALANCE_CASES:
        costs, lengths = costs_for(seed, n), lengths_for(seed, n, 100)
        kwargs = {} if capacity is None else {"lengths": lengths, "capacity": capacity}
        expected = balanced_assign(costs, num_bins, impl="python", **kwargs)
        assert torch.equal(balanced_assign(costs, num_bins, impl="cpp", **kwargs), expected), (seed, n, capacity)


@pytest.mark.parametrize("impl", IMPLS)
def test_balanced_beats_round_robin_on_skewed_costs(impl):
    costs = costs_for(0, 2000) ** 2  # heavy tail: a few samples cost as much as hundreds
    num_bins = 8

    def max_over_mean(bins: torch.Tensor) -> float:
        loads = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, costs)
        return float(loads.max() / loads.mean())

    balanced = max_over_mean(balanced_assign(costs, num_bins, impl=impl))
    round_robin = max_over_mean(torch.arange(costs.numel()) % num_bins)
    assert balanced < 1.01 < round_robin
    assert balanced_assign([9.0, 8.0, 5.0, 3.0, 2.0, 1.0], 2, impl=impl).tolist() == [0, 1, 1, 0, 0, 1]


@pytest.mark.parametrize("impl", IMPLS)
def test_balanced_rejects_bad_arguments(impl):
    for costs in ([1.0, float("nan")], [-1.0]):
        with pytest.raises(ValueError, match="costs"):
            balanced_assign(costs, 2, impl=impl)
    with pytest.raises(ValueError, match="lengths"):
        balanced_assign([1.0], 2, lengths=[-3], capacity=10, impl=impl)
    with pytest.raises(ValueError, match="together"):
        balanced_assign([1.0], 2, capacity=10)
    with pytest.raises(ValueError, match="num_bins"):
        balanced_assign([1.0], 0)


# --- cu_seqlens and position ids ---------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_cu_seqlens_and_positions(impl):
    cu_seqlens, positions = cu_seqlens_and_positions([3, 0, 2, 1], impl=impl)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, 3, 3, 5, 6]
    assert positions.dtype == torch.int64 and positions.tolist() == [0, 1, 2, 0, 1, 0]
    cu_seqlens, positions = cu_seqlens_and_positions([], impl=impl)
    assert cu_seqlens.tolist() == [0] and positions.numel() == 0
    with pytest.raises(ValueError, match="int32"):
        cu_seqlens_and_positions([2**30, 2**30], impl=impl)


@needs_ext
def test_cu_seqlens_cpp_equals_reference():
    for seed, n in enumerate((1, 5, 100, 3000)):
        lengths = lengths_for(seed, n, 50)
        for expected, got in zip(cu_seqlens_and_positions(lengths, impl="python"),
                                 cu_seqlens_and_positions(lengths, impl="cpp")):
            assert expected.dtype == got.dtype and torch.equal(expected, got)


# --- packing copy ------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype, row", [(torch.int64, ()), (torch.bfloat16, (6,)), (torch.float32, (2, 3))])
def test_pack_copy_equals_cat(impl, dtype, row):
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 9, (40,), generator=g)
    offsets = torch.cumsum(lengths, 0) - lengths
    src = torch.randn((int(lengths.sum()) + 5, *row), generator=g).mul(100).to(dtype)
    order = torch.randperm(40, generator=g)[:25].tolist() + [3, 3]  # a subset, one sample twice
    expected = torch.cat([src[offsets[s]:offsets[s] + lengths[s]] for s in order])
    assert torch.equal(pack_copy(src, offsets, lengths, order, impl=impl), expected)

    padded = torch.zeros((expected.shape[0] + 4, *row), dtype=dtype)
    assert pack_copy(src, offsets, lengths, order, out=padded, impl=impl) is padded
    assert torch.equal(padded[:expected.shape[0]], expected) and not padded[expected.shape[0]:].any()
    assert pack_copy(src, offsets, lengths, [], impl=impl).shape == (0, *row)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int16, torch.uint16, torch.float16,
                                   torch.complex128, torch.float8_e4m3fn])
def test_pack_copy_cpp_moves_any_dtype(dtype):
    """The extension copies rows as bytes (element size x row width): every dtype, byte for byte as cat."""
    size = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 2 if dtype == torch.bool else 256, (30 * 4 * size,), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(1))
    src = raw.view(dtype).reshape(30, 4)
    offsets, lengths, order = [0, 7, 12, 20], [7, 5, 8, 10], [3, 0, 2, 0]
    expected = pack_copy(src, offsets, lengths, order, impl="python")
    got = pack_copy(src, offsets, lengths, order, impl="cpp")
    padded = pack_copy(src, offsets, lengths, order, out=torch.zeros(40, 4, dtype=dtype), impl="cpp")
    assert got.dtype == dtype and got.shape == expected.shape == (32, 4)
    as_bytes = expected.view(torch.uint8)
    assert torch.equal(got.view(torch.uint8), as_bytes) and torch.equal(padded[:32].view(torch.uint8), as_bytes)
    assert not padded[32:].view(torch.uint8).any()


@pytest.mark.parametrize("impl", IMPLS)
def test_pack_copy_rejects_bad_arguments(impl):
    src = torch.arange(10)
    with pytest.raises(ValueError, match="order"):
        pack_copy(src, [0, 5], [5, 5], [2], impl=impl)
    with pytest.raises(ValueError, match="past"):
        pack_copy(src, [0, 6], [5, 5], [1], impl=impl)
    with pytest.raises(ValueError, match=">= 0"):
        pack_copy(src, [0, -1], [5, 5], [1], impl=impl)
    with pytest.raises(ValueError, match="out"):
        pack_copy(src, [0, 5], [5, 5], [0, 1], out=torch.empty(9, dtype=torch.int64), impl=impl)
    with pytest.raises(ValueError, match="out"):
        pack_copy(src, [0, 5], [5, 5], [0, 1], out=torch.empty(10, dtype=torch.int32), impl=impl)
    pack_copy(src, [0, 6], [5, 5], [0], impl=impl)  # a bad sample not in order is never read


# --- dispatch ----------------------------------------------------------------------------------

def test_reference_runs_without_the_extension(monkeypatch):
    monkeypatch.setattr(packing, "_packing_ext", None)
    assert packing.implementation() == "python"
    assert ffd_pack([5, 3, 8], 10, 3).tolist() == [1, 1, 0]
    with pytest.raises(RuntimeError, match="not built"):
        ffd_pack([5], 10, 1, impl="cpp")
