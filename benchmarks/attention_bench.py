"""Which varlen attention path is fastest, and correct, for the shapes megaomni runs: the vision
encoder's packed images (Qwen2-VL-2B ViT: 16 heads x 80), its 8x8 windows (Qwen2.5-VL) and a
packed causal LLM row (12 query heads, 2 KV groups, x 128).

    PYTHONPATH=. python benchmarks/attention_bench.py [--shapes vit,vit_window,llm] [--repeat 10]
        [--warmup 3] [--paths megaomni,sdpa_batched,...] [--quick] [--out benchmarks/results]

Every path takes packed ``[t, heads, dim]`` q/k/v and returns ``[t, heads, dim]`` (layout changes
are timed with it). For each (shape, path): forward ms (as in training: inputs require grad),
forward+backward ms, TFLOP/s (forward ``4 * sum(n_i^2) * heads * dim``, halved for causal;
backward 2.5x forward), the max abs error of the output and of dq/dk/dv against a float64
reference (math SDPA, one segment length and one KV head at a time) and that error over the
reference's largest value (bf16 tolerance: 2 % out, 5 % grads; see TOLERANCE), the first call's seconds
(compile, autotune, plan building: not in the timings) and peak memory, or why the path was
skipped (one line). Paths:

- ``megaomni``: ``megaomni.ops.attention`` as ``SDPAttention`` calls it today
  (``varlen_attention``, else ``sdpa_attention`` with a block mask);
- ``megaomni_blockmask``: its fallback (``sdpa_attention`` with the ``[t, t]`` block mask) forced;
- ``sdpa_batched[<backend>]``: SDPA per segment length, equal-length segments stacked into one
  dense batch, each backend forced by ``sdpa_kernel`` (GQA by ``enable_gqa``, else K/V repeated);
- ``sdpa_njt[<backend>]``: SDPA on nested jagged tensors (offsets = cu_seqlens);
- ``flex``: FlexAttention, ``torch.compile``d on CUDA (eager on CPU), document mask from
  cu_seqlens; the block mask is built once per shape and its build time reported apart;
- ``varlen_attn``: ``torch.nn.attention.varlen.varlen_attn`` called directly (native GQA where
  this torch takes ``enable_gqa``);
- ``flash_attn``: ``flash_attn.flash_attn_varlen_func`` (or FA3's ``flash_attn_interface``)
  where importable.

``--quick``: tiny shapes, runs on the CPU (the smoke test, tests/ops/test_attention_bench.py).
Writes ``attention_bench_<device>.json`` (``attention_bench_quick_<device>.json`` with --quick).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import cpu_model, median_ms, write_result  # noqa: E402

from megaomni.ops.attention import sdpa_attention, varlen_attention  # noqa: E402

# Tolerances on the max abs error over the largest reference value, per tensor (out; dq, dk, dv).
# Relative because an absolute bound does not separate right from wrong here: over a 4096-token
# bidirectional segment |out| stays under ~0.13 (an average of ~4k unit values), while the
# gradients of a causal row's first tokens reach ~7. A correct bf16 kernel lands near 0.3-1 %
# (CPU: 0.4 % out / 1.1 % grads at 4096 bidirectional), a wrong mask near 100 %.
TOLERANCE = {torch.bfloat16: {"out": 2e-2, "grad": 5e-2}, torch.float16: {"out": 5e-3, "grad": 1e-2},
             torch.float32: {"out": 1e-4, "grad": 1e-4}}

# The LLM row: 12 samples of 200..2000 tokens, 8192 in all.
LLM_LENGTHS = (1200, 412, 977, 200, 1520, 655, 288, 500, 734, 350, 900, 456)


@dataclass
class Shape:
    name: str
    lengths: tuple[int, ...]
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool

    @property
    def total(self) -> int:
        return sum(self.lengths)

    def forward_flops(self) -> float:
        flops = 4 * sum(n * n for n in self.lengths) * self.heads * self.head_dim
        return flops / 2 if self.causal else flops

    def describe(self) -> str:
        runs, out = [], []
        for n in self.lengths:
            if runs and runs[-1][0] == n:
                runs[-1][1] += 1
            else:
                runs.append([n, 1])
        for n, c in runs:
            out.append(f"{c}x{n}" if c > 1 else str(n))
        gqa = f"/{self.kv_heads}kv" if self.kv_heads != self.heads else ""
        return (f"{'+'.join(out)} ({self.total} tok), {self.heads}{gqa}h x {self.head_dim}, "
                f"{'causal' if self.causal else 'bidir'}")


def shapes(groups: list[str], quick: bool) -> list[Shape]:
    if quick:
        table = {"vit": [Shape("vit_mix", (32, 48, 32), 2, 2, 16, False)],
                 "vit_window": [Shape("vit_window", (8,) * 8, 2, 2, 16, False)],
                 "llm": [Shape("llm", (40, 24, 64), 4, 2, 32, True)]}
    else:
        table = {"vit": [Shape("vit_4x2304", (2304,) * 4, 16, 16, 80, False),
                         Shape("vit_1x9216", (9216,), 16, 16, 80, False),
                         Shape("vit_mix", (1024, 2304, 4096), 16, 16, 80, False)],
                 "vit_window": [Shape("vit_window", (64,) * 144, 16, 16, 80, False)],
                 "llm": [Shape("llm", LLM_LENGTHS, 12, 2, 128, True)]}
    unknown = [g for g in groups if g not in table]
    if unknown:
        raise SystemExit(f"unknown shapes {unknown}; known: {list(table)}")
    return [s for g in groups for s in table[g]]


def one_line(e: BaseException, extra: str = "") -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    if extra:
        text += " | " + " ".join(extra.split())
    return text[:300]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cu_seqlens(lengths, device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return cu.to(device)


def groups_by_length(lengths) -> list[tuple[int, list[int]]]:
    """``[(length, [start, ...])]``: the segments of each length, in order of first appearance."""
    starts, at = {}, 0
    for n in lengths:
        starts.setdefault(n, []).append(at)
        at += n
    return list(starts.items())


def stack(x: torch.Tensor, n: int, starts: list[int]) -> torch.Tensor:
    """``[t, h, d]`` -> ``[segments, h, n, d]`` for the segments of length ``n`` at ``starts``."""
    if all(b - a == n for a, b in zip(starts, starts[1:])):  # adjacent: a view
        dense = x[starts[0]:starts[0] + n * len(starts)].view(len(starts), n, *x.shape[1:])
    else:
        dense = torch.stack([x[s:s + n] for s in starts])
    return dense.transpose(1, 2)


def unstack(pieces: list[tuple[int, int, list[int], torch.Tensor]]) -> torch.Tensor:
    """Inverse of :func:`stack` over all groups: ``[(n, _, starts, [segments, h, n, d])]`` -> ``[t, h, d]``."""
    parts = []
    for n, _, starts, out in pieces:
        out = out.transpose(1, 2)  # [segments, n, h, d]
        if all(b - a == n for a, b in zip(starts, starts[1:])):  # adjacent: one piece
            parts.append((starts[0], out.reshape(-1, *out.shape[2:])))
        else:
            parts.extend((s, out[i]) for i, s in enumerate(starts))
    if len(parts) == 1:
        return parts[0][1]
    parts.sort(key=lambda p: p[0])
    return torch.cat([p for _, p in parts])


# ---------------------------------------------------------------- reference


def reference(shape: Shape, q, k, v, grad):
    """float64 output and dq/dk/dv: math SDPA per segment length and per KV head (bounded memory)."""
    group = shape.heads // shape.kv_heads
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    scale = shape.head_dim ** -0.5
    with sdpa_kernel([SDPBackend.MATH]):
        for n, starts in groups_by_length(shape.lengths):
            for j in range(shape.kv_heads):
                heads = slice(j * group, (j + 1) * group)
                qs = stack(q64[:, heads], n, starts)
                ks, vs = (stack(x[:, j:j + 1], n, starts) for x in (k64, v64))
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=shape.causal, scale=scale,
                                                   enable_gqa=group > 1)
                g = stack(grad[:, heads].double(), n, starts)
                o.backward(g)
                o = o.detach().transpose(1, 2)
                for i, s in enumerate(starts):
                    out[s:s + n, heads] = o[i]
    return out, (q64.grad, k64.grad, v64.grad)


# ---------------------------------------------------------------- paths
# Each maker returns (fn(q, k, v) -> out [t, h, d], note) or raises to say why the path does not apply.

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def make_megaomni(shape: Shape, device, dtype):
    cu = cu_seqlens(shape.lengths, "cpu")  # SDPAttention's params carry them on the device
    cu_dev = cu.to(device)
    longest, scale = max(shape.lengths), shape.head_dim ** -0.5
    probe = torch.zeros(1, 1, 8, device=device, dtype=dtype)
    took = "varlen_attn" if varlen_attention(probe, probe, probe, cu_seqlens((1,), device), 1, causal=False,
                                             scale=1.0) is not None else "sdpa + [t, t] block mask"

    def fn(q, k, v):
        out = varlen_attention(q, k, v, cu_dev, longest, causal=shape.causal, scale=scale)
        if out is not None:
            return out
        return blockmask(q, k, v)

    def blockmask(q, k, v):
        q4, k4, v4 = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))
        out = sdpa_attention(q4, k4, v4, causal=shape.causal, cu_seqlens=cu_dev, scale=scale)
        return out.squeeze(0).transpose(0, 1)

    return fn, f"today: {took}"


def make_megaomni_blockmask(shape: Shape, device, dtype):
    cu_dev = cu_seqlens(shape.lengths, device)
    scale = shape.head_dim ** -0.5

    def fn(q, k, v):
        q4, k4, v4 = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))
        out = sdpa_attention(q4, k4, v4, causal=shape.causal, cu_seqlens=cu_dev, scale=scale)
        return out.squeeze(0).transpose(0, 1)

    return fn, "megaomni's fallback forced"


def make_sdpa_batched(backend: str):
    def make(shape: Shape, device, dtype):
        groups = groups_by_length(shape.lengths)
        scale, group = shape.head_dim ** -0.5, shape.heads // shape.kv_heads
        state = {"gqa": group > 1}

        def call(q, k, v, gqa):
            pieces = []
            with sdpa_kernel([BACKENDS[backend]]):
                for n, starts in groups:
                    qs = stack(q, n, starts)
                    if group > 1 and not gqa:
                        ks, vs = (stack(x.repeat_interleave(group, dim=1), n, starts) for x in (k, v))
                    else:
                        ks, vs = (stack(x, n, starts) for x in (k, v))
                    out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=shape.causal, scale=scale,
                                                         enable_gqa=gqa)
                    pieces.append((n, None, starts, out))
            return unstack(pieces)

        def fn(q, k, v):
            return call(q, k, v, state["gqa"])

        note = f"{len(groups)} call(s)"
        if state["gqa"]:  # does this backend take enable_gqa? else K/V repeated
            t = min(shape.lengths)
            x = torch.randn(t, shape.heads, shape.head_dim, device=device, dtype=dtype, requires_grad=True)
            y = torch.randn(t, shape.kv_heads, shape.head_dim, device=device, dtype=dtype, requires_grad=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with sdpa_kernel([BACKENDS[backend]]):
                        F.scaled_dot_product_attention(*(stack(z, t, [0]) for z in (x, y, y)), is_causal=shape.causal,
                                                       enable_gqa=True).sum().backward()
                note += ", enable_gqa"
            except RuntimeError:
                state["gqa"] = False
                note += ", K/V repeated"
        return fn, note
    return make


def make_sdpa_njt(backend: str):
    def make(shape: Shape, device, dtype):
        offsets = cu_seqlens(shape.lengths, device).long()
        scale, group = shape.head_dim ** -0.5, shape.heads // shape.kv_heads

        def fn(q, k, v):
            if group > 1:
                k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
            q4, k4, v4 = (torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2) for x in (q, k, v))
            with sdpa_kernel([BACKENDS[backend]]):
                out = F.scaled_dot_product_attention(q4, k4, v4, is_causal=shape.causal, scale=scale)
            return out.transpose(1, 2).values()

        return fn, "K/V repeated" if group > 1 else ""
    return make


_COMPILED_FLEX = None


def make_flex(shape: Shape, device, dtype):
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    ids = torch.repeat_interleave(torch.arange(len(shape.lengths), device=device),
                                  torch.tensor(shape.lengths, device=device))
    causal = shape.causal

    def document(b, h, q_idx, kv_idx):
        same = ids[q_idx] == ids[kv_idx]
        return same & (q_idx >= kv_idx) if causal else same

    sync(device)
    t0 = time.perf_counter()
    mask = create_block_mask(document, None, None, shape.total, shape.total, device=device)
    sync(device)
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        if _COMPILED_FLEX is None:
            # one compile per (t, heads, head dim, causal): masks of one length share it
            for knob in ("recompile_limit", "cache_size_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 64))
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        attend, how = _COMPILED_FLEX, "compiled"
        extra = {}
    else:  # eager flex has no backward on the CPU: forward only
        attend, how = flex_attention, "eager (CPU)"
        extra = {"forward_only": "FlexAttention has no backward on the CPU"}
    scale, gqa = shape.head_dim ** -0.5, shape.heads != shape.kv_heads

    def fn(q, k, v):
        if "forward_only" in extra:
            q, k, v = (x.detach() for x in (q, k, v))
        q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        return attend(q4, k4, v4, block_mask=mask, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)

    return fn, f"{how}, block mask {build_s * 1e3:.1f} ms ({mask.BLOCK_SIZE[0]}-blocks)", \
        {"block_mask_build_s": build_s, **extra}


def make_varlen_attn(shape: Shape, device, dtype):
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:
        raise RuntimeError(f"this torch ({torch.__version__}) has no torch.nn.attention.varlen") from e
    params = inspect.signature(varlen_attn).parameters
    cu = cu_seqlens(shape.lengths, device)
    longest, scale, group = max(shape.lengths), shape.head_dim ** -0.5, shape.heads // shape.kv_heads
    kwargs = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0) if shape.causal else (-1, -1)
    elif "is_causal" in params:
        kwargs["is_causal"] = shape.causal
    elif shape.causal:
        raise RuntimeError("varlen_attn takes neither window_size nor is_causal")
    native = group > 1 and "enable_gqa" in params
    if native:
        kwargs["enable_gqa"] = True

    def fn(q, k, v):
        if group > 1 and not native:
            k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
        return varlen_attn(q, k, v, cu, cu, longest, longest, **kwargs)

    return fn, "native GQA" if native else ("K/V repeated" if group > 1 else "")


def make_flash_attn(shape: Shape, device, dtype):
    try:
        from flash_attn_interface import flash_attn_varlen_func  # FA3 (Hopper)
        which = "FA3"
    except ImportError:
        try:
            from flash_attn import flash_attn_varlen_func
            which = "FA2"
        except ImportError as e:
            raise RuntimeError("flash-attn is not importable here") from e
    cu = cu_seqlens(shape.lengths, device)
    longest, scale = max(shape.lengths), shape.head_dim ** -0.5

    def fn(q, k, v):
        out = flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, softmax_scale=scale, causal=shape.causal)
        return out[0] if isinstance(out, tuple) else out

    return fn, which


PATHS: dict[str, Callable] = {"megaomni": make_megaomni, "megaomni_blockmask": make_megaomni_blockmask}
for _b in BACKENDS:
    PATHS[f"sdpa_batched[{_b}]"] = make_sdpa_batched(_b)
for _b in ("cudnn", "flash", "efficient"):
    PATHS[f"sdpa_njt[{_b}]"] = make_sdpa_njt(_b)
PATHS.update({"flex": make_flex, "varlen_attn": make_varlen_attn, "flash_attn": make_flash_attn})
PATH_FAMILIES = ("megaomni", "megaomni_blockmask", "sdpa_batched", "sdpa_njt", "flex", "varlen_attn", "flash_attn")


# ---------------------------------------------------------------- timing


def max_err(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Max abs error, and that over max |want|."""
    err = float((got.detach().double() - want).abs().max())
    return err, err / max(float(want.abs().max()), 1e-30)


class _ForwardOnly(Exception):
    pass


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run_path(name: str, shape: Shape, device, dtype, q, k, v, grad, ref, args) -> dict:
    rec = {"path": name}
    tol = TOLERANCE[dtype]
    handler = _Collect()
    nested_log = logging.getLogger("torch.nested._internal.sdpa")
    nested_log.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            made = PATHS[name](shape, device, dtype)
            fn, note = made[0], made[1]
            if len(made) > 2:
                rec.update(made[2])
            rec["note"] = note
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            out = fn(q, k, v)
            sync(device)
            rec["first_forward_s"] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - every path reports why it does not apply
            # SDPA says why each backend declined in warnings (dense) or log records (nested)
            reasons = [str(w.message) for w in caught] + handler.messages
            reasons = [r.strip() for r in reasons if r.strip() and not r.strip().endswith("because:")
                       and "Transformer Engine" not in r]
            rec["skipped"] = one_line(e, " / ".join(dict.fromkeys(reasons[:3])))
            return rec
        finally:
            nested_log.removeHandler(handler)
    rec["err_out"], rec["rel_err_out"] = max_err(out, ref[0])
    rec["out_ok"] = rec["rel_err_out"] <= tol["out"]
    try:
        if rec.get("forward_only"):
            raise _ForwardOnly(rec["forward_only"])
        t0 = time.perf_counter()
        grads = torch.autograd.grad(out, (q, k, v), grad)
        sync(device)
        rec["first_backward_s"] = time.perf_counter() - t0
        errs = [max_err(g, r) for g, r in zip(grads, ref[1])]
        rec["err_grad"], rec["rel_err_grad"] = max(e[0] for e in errs), max(e[1] for e in errs)
        rec["grad_ok"] = rec["rel_err_grad"] <= tol["grad"]
        del grads
    except _ForwardOnly as e:
        rec["backward_skipped"] = str(e)
    except Exception as e:  # noqa: BLE001
        rec["backward_skipped"] = one_line(e)
    del out
    flops = shape.forward_flops()
    try:
        rec["forward_ms"] = median_ms(lambda: fn(q, k, v), args.warmup, args.repeat, device)
        rec["forward_tflops"] = flops / (rec["forward_ms"] / 1e3) / 1e12
        if "backward_skipped" not in rec:
            rec["forward_backward_ms"] = median_ms(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad),
                                                 args.warmup, args.repeat, device)
            rec["forward_backward_tflops"] = 3.5 * flops / (rec["forward_backward_ms"] / 1e3) / 1e12
    except Exception as e:  # noqa: BLE001
        rec["timing_failed"] = one_line(e)
    if device.type == "cuda":
        rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    rec["ok"] = bool(rec.get("out_ok") and rec.get("grad_ok", "backward_skipped" in rec))
    return rec


def selected_paths(spec: Optional[str]) -> list[str]:
    if not spec:
        return list(PATHS)
    chosen = []
    for item in spec.split(","):
        item = item.strip()
        hits = [p for p in PATHS if p == item or p.split("[")[0] == item]
        if not hits:
            raise SystemExit(f"unknown path {item!r}; known: {list(PATHS)}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def err(r: dict, which: str) -> str:
    if f"err_{which}" not in r:
        return "-"
    return f"{r[f'err_{which}']:.1e} ({r[f'rel_err_{which}'] * 100:.2f}%)"


def print_table(device_name: str, rows: list[dict]) -> None:
    print(f"\n{device_name}, torch {torch.__version__}")
    print("| shape | path | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | err out (rel) | err grad (rel) | ok "
          "| first call s | note / skipped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = (r.get("first_forward_s") or 0) + (r.get("first_backward_s") or 0)
        note = r.get("skipped") or "; ".join(x for x in (r.get("note"), r.get("backward_skipped"),
                                                        r.get("timing_failed")) if x)
        print(f"| {r['shape']} | {r['path']} | {fmt(r.get('forward_ms'), '.3f')} "
              f"| {fmt(r.get('forward_tflops'), '.1f')} "
              f"| {fmt(r.get('forward_backward_ms'), '.3f')} | {fmt(r.get('forward_backward_tflops'), '.1f')} "
              f"| {err(r, 'out')} | {err(r, 'grad')} "
              f"| {'' if 'skipped' in r else ('yes' if r['ok'] else 'NO')} "
              f"| {fmt(first if 'skipped' not in r else None, '.2f')} | {note} |")


def fastest(rows: list[dict]) -> dict:
    best = {}
    for r in rows:
        key = "forward_backward_ms" if "forward_backward_ms" in r else None
        if not r.get("ok") or key is None:
            continue
        if r["shape"] not in best or r[key] < best[r["shape"]][key]:
            best[r["shape"]] = r
    return {s: {"path": r["path"], "forward_backward_ms": r["forward_backward_ms"]} for s, r in best.items()}


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="vit,vit_window,llm")
    parser.add_argument("--paths", default=None, help=f"comma list of paths or families {PATH_FAMILIES}; "
                        "default all")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU-OK smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    paths = selected_paths(args.paths)
    rows, shape_info = [], []
    started = time.perf_counter()
    for shape in shapes([s.strip() for s in args.shapes.split(",") if s.strip()], args.quick):
        gen = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(shape.total, shape.heads, shape.head_dim, device=device, dtype=dtype, generator=gen)
        k, v = (torch.randn(shape.total, shape.kv_heads, shape.head_dim, device=device, dtype=dtype, generator=gen)
                for _ in range(2))
        grad = torch.randn(shape.total, shape.heads, shape.head_dim, device=device, dtype=dtype, generator=gen)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        t0 = time.perf_counter()
        ref = reference(shape, q, k, v, grad)
        sync(device)
        info = {"name": shape.name, "describe": shape.describe(), "lengths": list(shape.lengths),
                "heads": shape.heads, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "causal": shape.causal,
                "forward_tflop": shape.forward_flops() / 1e12, "reference_s": time.perf_counter() - t0}
        shape_info.append(info)
        print(f"{shape.name}: {info['describe']}, fwd {info['forward_tflop'] * 1e3:.1f} GFLOP "
              f"(reference {info['reference_s']:.1f} s)", flush=True)
        for name in paths:
            rec = {"shape": shape.name, **run_path(name, shape, device, dtype, q, k, v, grad, ref, args)}
            rows.append(rec)
            status = rec.get("skipped") or (f"fwd {fmt(rec.get('forward_ms'), '.3f')} ms, fwd+bwd "
                                            f"{fmt(rec.get('forward_backward_ms'), '.3f')} ms, err "
                                            f"{err(rec, 'out')} / {err(rec, 'grad')}")
            print(f"  {name:24s} {status}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del ref, q, k, v, grad
    print_table(device_name, rows)
    best = fastest(rows)
    print("\nfastest correct forward+backward per shape:")
    for s, b in best.items():
        print(f"  {s:12s} {b['path']} ({b['forward_backward_ms']:.3f} ms)")
    total_s = time.perf_counter() - started
    print(f"total {total_s:.0f} s")
    try:
        import flash_attn
        fa_version = flash_attn.__version__
    except ImportError:
        fa_version = None
    result = {"benchmark": "attention_bench", "device": device_name,
              "cpu": cpu_model() if device.type == "cpu" else None, "dtype": args.dtype, "quick": args.quick,
              "repeat": args.repeat, "warmup": args.warmup,
              "tolerance": {**TOLERANCE[dtype], "on": "max abs error / max abs float64 reference, per tensor"},
              "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
                           "flash_attn": fa_version},
              "flops": "forward 4*sum(n_i^2)*heads*head_dim (halved causal); backward 2.5x forward",
              "timing": "median ms; forward with inputs requiring grad; layout changes from/to packed [t, h, d] "
                        "included; first calls (compile/autotune) excluded, reported as first_*_s",
              "shapes": shape_info, "results": rows, "fastest_correct": best, "total_s": total_s}
    if not args.no_write:
        write_result(result, args.out, "attention_bench_quick" if args.quick else "attention_bench", device_name)
    return result


if __name__ == "__main__":
    main()
