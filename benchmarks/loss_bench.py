"""The output layer and its cross-entropy, forward + backward, per path: which loss runs fastest
over a large vocabulary, and what memory each holds.

    PYTHONPATH=. python benchmarks/loss_bench.py [--tokens 8192] [--hidden 1536] [--vocab 151936]
        [--repeat 10] [--warmup 3] [--paths megatron,torch,...] [--out benchmarks/results]

Paths (bf16 hidden states and output weight, fp32 loss, one tensor-parallel rank):

- ``megatron``: megatron-core's ``vocab_parallel_cross_entropy`` (``train.cross_entropy=megatron``);
- ``megatron_fused``: megatron-core's ``fused_vocab_parallel_cross_entropy`` (its "native" loss
  fusion, ``torch.compile``d pieces, no Transformer Engine);
- ``torch``: torch's log-softmax + NLL on fp32 logits (``train.cross_entropy=torch``; what the
  plain-PyTorch baseline runs);
- ``chunked``: megaomni.ops.cross_entropy (``train.cross_entropy=chunked``).

Each row: median ms of the output GEMM + loss + backward (to the hidden states and the weight),
peak memory above the inputs, and the largest loss and gradient differences from ``torch``'s.
Writes ``loss_bench_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import cpu_model, median_ms, write_result  # noqa: E402

from megaomni.ops.cross_entropy import chunked_cross_entropy, full_cross_entropy  # noqa: E402


def paths(tp_group) -> dict:
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    def logits_of(hidden, weight):  # [s, b, v], megatron's layout
        return hidden @ weight.t()

    return {
        "megatron": lambda h, w, y: vocab_parallel_cross_entropy(logits_of(h, w), y.t().contiguous()),
        "megatron_fused": lambda h, w, y: fused_vocab_parallel_cross_entropy(logits_of(h, w), y.t().contiguous(),
                                                                           tp_group),
        "torch": lambda h, w, y: full_cross_entropy(logits_of(h, w), y).t(),
        "chunked": lambda h, w, y: chunked_cross_entropy(h, w, y).t(),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--paths", default="", help="comma-separated (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args(argv)

    from megaomni.config import OmniConfig
    from megaomni.platform.distributed import init_distributed, pick_device

    cfg = OmniConfig()
    init_distributed(cfg)
    from megatron.core import parallel_state as ps

    device = pick_device("auto")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = (torch.randn(args.tokens, 1, args.hidden, generator=gen)).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * args.hidden ** -0.5).to(device, dtype)
    weight.requires_grad_()
    labels = torch.randint(0, args.vocab, (1, args.tokens), generator=gen).to(device)
    scale = torch.rand(args.tokens, 1, generator=gen).to(device)  # a per-token weighting, as the loss mask gives

    def run(fn):
        hidden.grad = weight.grad = None
        loss = fn(hidden, weight, labels)  # [s, b]
        (loss * scale).sum().backward()
        return loss.detach(), hidden.grad, weight.grad

    rows, reference = [], None
    for name, fn in paths(ps.get_tensor_model_parallel_group()).items():
        if args.paths and name not in args.paths.split(","):
            continue
        try:
            loss, dh, dw = run(fn)  # the first call: compilation where the path compiles
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            ms = median_ms(lambda: run(fn), args.warmup, args.repeat, device)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if device.type == "cuda" else None
        except Exception as err:  # a path this machine cannot run is a row saying why
            rows.append({"path": name, "skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
            continue
        if name == "torch":
            reference = (loss, dh, dw)
        rows.append({"path": name, "ms": ms, "peak_gib": peak, "outputs": (loss, dh, dw)})
    for row in rows:
        outputs = row.pop("outputs", None)
        if outputs is not None and reference is not None:
            row["max_diff"] = {what: float((a.float() - b.float()).abs().max() / b.float().abs().max())
                               for what, a, b in zip(("loss", "d_hidden", "d_weight"), outputs, reference)}
    print(f"{'path':16} {'ms':>8} {'peak GiB':>9}  max diff / max |torch| (loss, d_hidden, d_weight)")
    for r in rows:
        if "skipped" in r:
            print(f"{r['path']:16} skipped: {r['skipped']}")
            continue
        diff = " ".join(f"{v:.1e}" for v in r.get("max_diff", {}).values())
        print(f"{r['path']:16} {r['ms']:8.2f} {r['peak_gib'] or 0:9.2f}  {diff}")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_model()
    result = {"device": name, "torch": torch.__version__, "dtype": str(dtype),
              "config": {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab}, "results": rows}
    write_result(result, args.out, "loss_bench", name)
    return result


if __name__ == "__main__":
    main()
