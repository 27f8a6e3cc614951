"""How fast the encoders run: forward and forward+backward of the vision and audio encoders on a
full micro-batch of the pipeline benchmark's mix, in TFLOP/s of the schedule's FLOP model, with
the CUDA kernels that take the time.

    python benchmarks/encoder_bench.py [--config examples/configs/omni_2b.yaml] [--repeats 10]
        [--out benchmarks/results] [KEY=VALUE ...]

One process, one GPU (or the CPU), the model built as ``pretrain_omni.py`` builds it (bf16 when
``train.bf16``). Images are drawn as tools/make_synthetic_data.py draws them (sides 224-672 px,
rounded to the 28-px merge cell) until ``data.max_patches`` is full; clips are 2-20 s until
``data.max_audio_frames`` is. Writes ``encoder_bench_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import median_ms, write_result  # noqa: E402

from megaomni.config import load_config  # noqa: E402
from megaomni.flops import FlopModel  # noqa: E402
from megaomni.media.audio import audio_tokens  # noqa: E402
from megaomni.media.modality import MediaBatch  # noqa: E402
from megaomni.media.vision import vision_tokens  # noqa: E402
from megaomni.parallel.model_chunks import build_model_chunks  # noqa: E402
from megaomni.platform.distributed import init_distributed, shutdown  # noqa: E402


def vision_inputs(cfg, rng: torch.Generator, device):
    cell = cfg.model.vision.patch_size * cfg.model.vision.merge_size
    grids, total = [], 0
    while True:
        h, w = (int(torch.randint(224 // cell, 672 // cell + 1, (1,), generator=rng)) * cfg.model.vision.merge_size
                for _ in range(2))
        if total + h * w > cfg.data.max_patches:
            break
        grids.append((h, w))
        total += h * w
    dim = cfg.model.vision.in_channels * cfg.model.vision.temporal_patch_size * cfg.model.vision.patch_size ** 2
    patches = torch.randn(total, dim, device=device)
    rows = tuple(h * w for h, w in grids)
    tokens = tuple(vision_tokens(h, w, cfg.model.vision.merge_size) for h, w in grids)
    return MediaBatch(patches, torch.tensor(grids), {"time": torch.zeros(len(grids), dtype=torch.long)}, rows,
                      tokens), list(rows)


def audio_inputs(cfg, rng: torch.Generator, device):
    lengths, total = [], 0
    while True:
        n = int(torch.randint(201, 2002, (1,), generator=rng))
        if total + n > cfg.data.max_audio_frames:
            break
        lengths.append(n)
        total += n
    features = torch.randn(total, cfg.model.audio.n_mels, device=device)
    tokens = tuple(audio_tokens(n, cfg.model.audio.downsample) for n in lengths)
    return MediaBatch(features, torch.tensor(lengths)[:, None], {}, tuple(lengths), tokens), lengths


def time_it(fn, repeats: int, device) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after two warm-up calls."""
    return median_ms(fn, 2, repeats, device) / 1e3


def top_kernels(fn, device, count: int = 8) -> list[dict]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    rows = [e for e in rows if device.type != "cuda" or e.device_type == torch.autograd.DeviceType.CUDA]
    return [{"name": e.key[:90], "ms": getattr(e, key) / 1e3, "calls": e.count} for e in rows[:count]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(ROOT, "examples", "configs", "omni_2b.yaml"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, ["parallel.pp=1", "parallel.tp=1", *args.overrides])
    device = init_distributed(cfg)
    model = build_model_chunks(cfg, cfg.model.llm.vocab_size or 4096, lambda name: 0)[0]
    dtype = torch.bfloat16 if cfg.train.bf16 else torch.float32
    model = model.to(device=device, dtype=dtype)
    flops = FlopModel.from_config(cfg.model, cfg.model.llm.vocab_size or 4096)
    rng = torch.Generator().manual_seed(0)
    rows = []
    for name, make in (("vision", vision_inputs), ("audio", audio_inputs)):
        if not getattr(cfg.model, name).enabled:
            continue
        encoder = getattr(model, f"{name}_encoder")
        inputs, sizes = make(cfg, rng, device)
        forward_flops = sum(flops.item_forward(name, size) for size in sizes)

        def forward():
            with torch.no_grad():
                encoder(inputs)

        def both():
            encoder(inputs).float().sum().backward()

        fwd, fwd_bwd = time_it(forward, args.repeats, device), time_it(both, args.repeats, device)
        row = {"encoder": name, "inputs": len(sizes), "rows": sum(sizes), "forward_tflop": forward_flops / 1e12,
               "forward_s": fwd, "forward_tflops": forward_flops / fwd / 1e12,
               "forward_backward_s": fwd_bwd, "forward_backward_tflops": 3 * forward_flops / fwd_bwd / 1e12,
               "top_kernels_forward_backward": top_kernels(both, device)}
        rows.append(row)
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"{dev}, {args.config}, {dtype}")
    print("| encoder | inputs | rows | fwd TFLOP | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['inputs']} | {r['rows']} | {r['forward_tflop']:.2f} | {r['forward_s'] * 1e3:.1f} | "
              f"{r['forward_tflops']:.0f} | {r['forward_backward_s'] * 1e3:.1f} | {r['forward_backward_tflops']:.0f} |")
    for r in rows:
        print(f"\n{r['encoder']}: kernels of one forward+backward")
        for k in r["top_kernels_forward_backward"]:
            print(f"  {k['ms']:8.2f} ms  {k['calls']:4d}x  {k['name']}")
    import megatron.core
    write_result({"benchmark": "encoder_bench", "device": dev, "config": os.path.relpath(args.config, ROOT),
                  "overrides": args.overrides, "dtype": str(dtype),
                  "versions": {"torch": torch.__version__, "megatron_core": megatron.core.__version__},
                  "encoders": rows}, args.out, "encoder_bench", dev)
    shutdown()


if __name__ == "__main__":
    main()
