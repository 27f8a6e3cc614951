"""Packing samples into budgets: first-fit-decreasing bins, cost-balanced assignment, cu_seqlens and
position ids of a packed sequence, and the copy of samples' rows into a packed buffer.

Each function's reference below is the definition of its output; ``csrc/packing.cpp`` (plain C++,
built by ``setup.py`` as ``megaomni._packing_ext`` and called here through ctypes over the tensors'
buffers) gives identical outputs faster (tests assert both). ``impl="auto"`` takes the C++ one when
it is built, ``"python"`` forces the reference, ``"cpp"`` insists on the extension. Both raise
ValueError on bad values: the reference checks here, the extension inside its own loops (a
collator calls these per packed bin, where tensor-op checks in Python would cost more than the
work).
"""

from __future__ import annotations

import ctypes
import heapq
import math
import operator
from typing import Optional, Sequence, Union

import torch

IMPLS = ("auto", "cpp", "python")
INT32_MAX = 2**31 - 1  # cu_seqlens are int32, as megatron-core's PackedSeqParams takes them
INT64_MAX = 2**63 - 1
ABI_VERSION = 1  # csrc/packing.cpp's kAbiVersion: the signatures below
COPY_GRAIN = 4096  # pack_copy goes multi-threaded (torch's thread count) above this many samples


def _load_ext() -> Optional[ctypes.CDLL]:
    """The kernels of csrc/packing.cpp: the file of the module ``megaomni._packing_ext``, opened
    with ctypes (whose calls release the GIL), with each function's signature. None when it is not
    built (MEGAOMNI_NO_EXT=1, no compiler) or is a build of another version: the reference runs."""
    try:
        from megaomni import _packing_ext as module
        lib = ctypes.CDLL(module.__file__)
        lib.megaomni_packing_abi_version.restype = ctypes.c_int64
        if lib.megaomni_packing_abi_version() != ABI_VERSION:
            return None
    except (ImportError, OSError, AttributeError):
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    signatures = {
        "megaomni_ffd_pack": (ptr, i64, i64, i64, ptr),
        "megaomni_balanced_assign": (ptr, i64, i64, ptr, i64, ptr),
        "megaomni_cu_seqlens": (ptr, i64, ptr),
        "megaomni_positions": (ptr, i64, ptr),
        "megaomni_pack_copy": (ptr, i64, i64, ptr, ptr, i64, ptr, i64, ptr, i64, i64),
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, i64
    lib.megaomni_packing_error.argtypes, lib.megaomni_packing_error.restype = (), ctypes.c_char_p
    return lib


_packing_ext = _load_ext()

Ints = Union[torch.Tensor, Sequence[int]]


def implementation() -> str:
    """What ``impl="auto"`` runs: ``"cpp"`` when the extension is built, else ``"python"``."""
    return "python" if _packing_ext is None else "cpp"


def _use_cpp(impl: str) -> bool:
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: valid are {', '.join(IMPLS)}")
    if impl == "cpp" and _packing_ext is None:
        raise RuntimeError("impl='cpp': megaomni._packing_ext is not built, or is from another version "
                           "(pip install --no-build-isolation -e . with a C++ compiler and MEGAOMNI_NO_EXT unset)")
    return impl != "python" and _packing_ext is not None


def _ext_error(code: int) -> Exception:
    """The exception for an extension function's negative return: -1 a bad value, -2 out of memory."""
    message = _packing_ext.megaomni_packing_error().decode()
    return ValueError(message) if code == -1 else MemoryError(message) if code == -2 else RuntimeError(message)


def _vector(values, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A 1-D CPU tensor of ``dtype``; integer inputs must not be floats (no silent truncation)."""
    t = torch.as_tensor(values)
    if t.numel() == 0:
        t = t.reshape(0)
    if t.dim() != 1 or t.device.type != "cpu":
        raise ValueError(f"{name}: expected a 1-D CPU sequence, got shape {tuple(t.shape)} on {t.device}")
    if dtype == torch.int64 and t.numel() and (t.is_floating_point() or t.is_complex()):
        raise TypeError(f"{name}: expected integers, got {t.dtype}")
    return t.to(dtype).contiguous()


def _non_negative(t: torch.Tensor, name: str) -> None:
    if bool((t < 0).any()):
        raise ValueError(f"{name}: values must be >= 0, got {t.min().item()}")


def _integer(value: int, name: str, minimum: int) -> int:
    try:
        value = operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        raise ValueError(f"{name}={value!r}: must be an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}")
    return value


# --- first-fit-decreasing within a window ------------------------------------------------------

def ffd_pack(lengths: Ints, budget: int, window: int, impl: str = "auto") -> torch.Tensor:
    """Bin id (int64 [n]) of each sample; bins hold at most ``budget`` in summed lengths.

    Samples are taken in consecutive windows of ``window`` (stream order kept across windows, so a
    streaming loader can pack as samples arrive). Within a window: longest first (ties: lower index
    first), each into the first of the window's bins with room, else a new bin. A window's bins
    close when it ends. Bins are numbered in creation order. A sample longer than ``budget`` gets
    -1: the caller decides whether to skip or truncate it, nothing is dropped silently.
    """
    lengths = _vector(lengths, torch.int64, "lengths")
    budget, window = _integer(budget, "budget", 1), _integer(window, "window", 1)
    if _use_cpp(impl):
        bins = torch.empty(lengths.numel(), dtype=torch.int64)
        code = _packing_ext.megaomni_ffd_pack(lengths.data_ptr(), lengths.numel(), min(budget, INT64_MAX),
                                              min(window, INT64_MAX), bins.data_ptr())
        if code < 0:
            raise _ext_error(code)
        return bins
    _non_negative(lengths, "lengths")
    return torch.tensor(_ffd_pack_reference(lengths.tolist(), budget, window), dtype=torch.int64)


def _ffd_pack_reference(lengths: list[int], budget: int, window: int) -> list[int]:
    bins = [-1] * len(lengths)
    first_bin = 0  # id of the current window's first bin
    for start in range(0, len(lengths), window):
        room: list[int] = []  # what is left in each of this window's bins, in creation order
        for i in sorted(range(start, min(start + window, len(lengths))), key=lambda i: -lengths[i]):
            if lengths[i] > budget:
                continue
            b = next((b for b, left in enumerate(room) if left >= lengths[i]), len(room))
            if b == len(room):
                room.append(budget)
            room[b] -= lengths[i]
            bins[i] = first_bin + b
        first_bin += len(room)
    return bins


# --- cost-balanced assignment to N bins --------------------------------------------------------

def balanced_assign(costs: Sequence[float], num_bins: int, lengths: Optional[Ints] = None,
                    capacity: Optional[int] = None, impl: str = "auto") -> torch.Tensor:
    """Bin id (int64 [n]) of each sample, equalising the summed estimated cost per bin: greedy
    longest-processing-time, i.e. costliest first (ties: lower index first), each into the bin
    with the least cost so far (ties: lowest bin id).

    With ``capacity``, bins also hold at most that much summed ``lengths`` (tokens, say): a sample
    goes to the least-loaded bin it still fits in, and gets -1 if it fits in none.
    """
    costs = _vector(costs, torch.float64, "costs")
    num_bins = _integer(num_bins, "num_bins", 1)
    if (lengths is None) != (capacity is None):
        raise ValueError("balanced_assign: lengths and capacity come together")
    if capacity is not None:
        lengths = _vector(lengths, torch.int64, "lengths")
        if lengths.numel() != costs.numel():
            raise ValueError(f"lengths has {lengths.numel()} values, costs {costs.numel()}")
        capacity = _integer(capacity, "capacity", 0)
    if _use_cpp(impl):
        bins = torch.empty(costs.numel(), dtype=torch.int64)
        code = _packing_ext.megaomni_balanced_assign(
            costs.data_ptr(), costs.numel(), min(num_bins, INT64_MAX), None if lengths is None else lengths.data_ptr(),
            -1 if capacity is None else min(capacity, INT64_MAX), bins.data_ptr())
        if code < 0:
            raise _ext_error(code)
        return bins
    if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
        raise ValueError("costs: values must be finite and >= 0")
    if lengths is not None:
        _non_negative(lengths, "lengths")
    return torch.tensor(_balanced_assign_reference(costs.tolist(), num_bins,
                                                   None if lengths is None else lengths.tolist(), capacity),
                        dtype=torch.int64)


def _balanced_assign_reference(costs: list[float], num_bins: int, lengths: Optional[list[int]],
                               capacity: Optional[int]) -> list[int]:
    bins = [-1] * len(costs)
    heap = [(0.0, b) for b in range(num_bins)]  # (load, bin): least loaded first, ties lowest bin
    used = [0] * num_bins
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        full = []  # bins this sample does not fit in, set aside while it looks further
        while heap and capacity is not None and used[heap[0][1]] + lengths[i] > capacity:
            full.append(heapq.heappop(heap))
        if heap:
            load, b = heapq.heappop(heap)
            bins[i] = b
            used[b] += 0 if capacity is None else lengths[i]
            heapq.heappush(heap, (load + costs[i], b))
        for entry in full:
            heapq.heappush(heap, entry)
    return bins


# --- cu_seqlens and position ids ---------------------------------------------------------------

def cu_seqlens_and_positions(lengths: Ints, impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """For sequences of ``lengths`` packed back to back: ``cu_seqlens`` (int32 [n+1], the offsets
    megatron-core's PackedSeqParams takes) and position ids (int64 [sum], from 0 in each)."""
    lengths = _vector(lengths, torch.int64, "lengths")
    if _use_cpp(impl):
        n = lengths.numel()
        cu_seqlens = torch.empty(n + 1, dtype=torch.int32)
        total = _packing_ext.megaomni_cu_seqlens(lengths.data_ptr(), n, cu_seqlens.data_ptr())
        if total < 0:
            raise _ext_error(total)
        positions = torch.empty(total, dtype=torch.int64)
        _packing_ext.megaomni_positions(cu_seqlens.data_ptr(), n, positions.data_ptr())
        return cu_seqlens, positions
    _non_negative(lengths, "lengths")
    total = int(lengths.sum())
    if total > INT32_MAX:
        raise ValueError(f"lengths sum to {total}: overflows int32 cu_seqlens")
    ends = torch.cumsum(lengths, 0)
    cu_seqlens = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    return cu_seqlens, torch.arange(total) - torch.repeat_interleave(ends - lengths, lengths)


# --- copying samples' rows into a packed buffer ------------------------------------------------

def pack_copy(src: torch.Tensor, offsets: Ints, lengths: Ints, order: Ints,
              out: Optional[torch.Tensor] = None, impl: str = "auto") -> torch.Tensor:
    """Rows ``src[offsets[s] : offsets[s] + lengths[s]]`` of each sample ``s`` in ``order``,
    concatenated along dim 0. ``src`` is any dtype and shape ([tokens] int64, [patches, d] bf16,
    ...). With ``out`` (same dtype and row shape, enough rows) the rows are written into its first
    rows and ``out`` is returned, so a buffer padded to a budget is filled in place."""
    offsets = _vector(offsets, torch.int64, "offsets")
    lengths = _vector(lengths, torch.int64, "lengths")
    order = _vector(order, torch.int64, "order")
    if _use_cpp(impl):
        return _pack_copy_ext(src, offsets, lengths, order, out)
    if src.dim() < 1 or src.device.type != "cpu":
        raise ValueError(f"src: expected a CPU tensor with at least one dim, got shape {tuple(src.shape)}")
    if offsets.numel() != lengths.numel():
        raise ValueError(f"offsets has {offsets.numel()} values, lengths {lengths.numel()}")
    if bool(((order < 0) | (order >= lengths.numel())).any()):
        raise ValueError(f"order: sample indices must lie in [0, {lengths.numel()})")
    # Only the placed samples are checked, so packing one bin costs O(its samples), not O(all).
    starts, counts = offsets[order], lengths[order]
    _non_negative(starts, "offsets")
    _non_negative(counts, "lengths")
    if bool((starts + counts > src.shape[0]).any()):
        raise ValueError(f"a sample's rows run past src's {src.shape[0]} rows")
    total = int(counts.sum())
    if out is None:
        out = torch.empty((total, *src.shape[1:]), dtype=src.dtype)
    elif (out.dtype != src.dtype or out.shape[1:] != src.shape[1:] or out.shape[0] < total
          or not out.is_contiguous() or out.device.type != "cpu"):
        raise ValueError(f"out: needs a contiguous CPU {src.dtype} tensor of shape "
                         f"[>= {total}, *{list(src.shape[1:])}], got {out.dtype} {list(out.shape)}")
    pieces = [src[start:start + count] for start, count in zip(starts.tolist(), counts.tolist())]
    if pieces:
        torch.cat(pieces, out=out[:total])
    return out


def _pack_copy_ext(src: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor,
                   out: Optional[torch.Tensor]) -> torch.Tensor:
    """pack_copy by the extension: rows as bytes (element size x row width), so any dtype. It checks
    the placed samples and returns the rows they need, copying only when the destination has them:
    with ``out`` one call, without it one to count and one to copy into what is allocated."""
    if src.dim() < 1 or not src.is_cpu or src.layout != torch.strided:
        raise ValueError("src: expected a CPU tensor with at least one dim")
    n, m = lengths.numel(), order.numel()
    if offsets.numel() != n:
        raise ValueError(f"offsets has {offsets.numel()} values, lengths {n}")
    src = src.contiguous()
    row_shape = src.shape[1:]
    samples = (src.data_ptr(), src.shape[0], math.prod(row_shape) * src.element_size(), offsets.data_ptr(),
               lengths.data_ptr(), n, order.data_ptr(), m)
    threads = torch.get_num_threads() if m > COPY_GRAIN else 1
    fits = (out is not None and out.is_cpu and out.layout == torch.strided and out.dtype == src.dtype
            and out.dim() == src.dim() and out.shape[1:] == row_shape and out.is_contiguous())
    # Into out when it fits (copied if it has the rows), else only checked and counted.
    total = _packing_ext.megaomni_pack_copy(*samples, out.data_ptr() if fits else None,
                                            out.shape[0] if fits else -1, threads)
    if total < 0:
        raise _ext_error(total)
    if out is None:
        out = torch.empty((total, *row_shape), dtype=src.dtype)
        copied = _packing_ext.megaomni_pack_copy(*samples, out.data_ptr(), total, threads)
        if copied != total:  # only if another thread changed offsets, lengths or order meanwhile
            raise _ext_error(copied) if copied < 0 else RuntimeError("pack_copy: the samples changed during the copy")
    elif not fits or out.shape[0] < total:
        def name(t: torch.Tensor) -> str:  # the dtype as torch's C++ names it: Long, BFloat16, ...
            return t.type().rsplit(".", 1)[-1].removesuffix("Tensor")
        raise ValueError(f"out: needs a contiguous CPU {name(src)} tensor of shape {list((total, *row_shape))} "
                         f"or more rows, got {name(out)} {list(out.shape)}")
    return out
