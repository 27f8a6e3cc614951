"""Does an imported Hugging Face model train as fast as megaomni's own of the same shape?

Builds a Qwen2-VL-2B-shaped ``Qwen2VLForConditionalGeneration`` with ``transformers`` (random
weights, no download), imports it (tools/convert_hf.py), trains it from the import on a synthetic
image / video / text mix, then trains the native model of the same shapes (RMSNorm, SwiGLU
encoder MLP of the same parameters, no biases, plain RoPE, one frame per patch) on the same data,
and compares tokens/s and MFU (median of the steady iterations). Prints a table and writes
``benchmarks/results/hf_import_<device>.json``. Each stage is skipped when its output exists, so
a run cut short resumes:

    python benchmarks/hf_import_bench.py --work /tmp/hf_bench [--iters 15] [--samples 400]
        [--tag NAME KEY=VALUE ...]   # every run with these overrides too, written as hf_import_NAME_<device>.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import yaml
from report import write_result  # benchmarks/report.py: run as a script, this folder is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Qwen2-VL-2B-Instruct's config.json (transformers 4 layout), vocabulary and all.
with open(os.path.join(ROOT, "examples", "hf", "qwen2_vl_2b_instruct_config.json")) as f:
    QWEN2_VL_2B = json.load(f)
# The workload: one GPU, 4096-token packed rows, 8192 patches a micro-batch, 24 samples a step.
COMMON = ("data.seq_length=4096", "data.max_tokens=4096", "data.max_patches=8192", "data.global_batch_size=24",
          "data.max_pixels=451584", "data.max_video_frames=8", "train.bf16=true", "train.lr=2e-5",
          "train.min_lr=2e-6", "train.warmup_iters=2", "checkpoint.save_last=false", "logging.log_interval=1",
          "model.audio.enabled=false", "model.llm.max_seq_len=4096")
# megaomni's own options at the same shapes: the encoder's 5120-wide 2-matrix MLP as a SwiGLU of
# the same parameters (5120 * 2/3), the default projector, plain RoPE, one frame per patch, and
# megaomni's image processing.
NATIVE = ("model.vision.norm=rmsnorm", "model.vision.activation=swiglu", "model.vision.bias=false",
          "model.vision.ffn_hidden_size=3416", "model.vision.projector_hidden_size=0",
          "model.vision.temporal_patch_size=1", "model.vision.temporal_embedding=true", "model.llm.mrope_section=[]",
          "model.llm.qkv_bias=false", "model.vision.resize=fit", "model.vision.image_mean=[0.5]",
          "model.vision.image_std=[0.5]")


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    return [item for key, value in tree.items() for item in
            (_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={json.dumps(value)}"])]


def _sh(label: str, *cmd: str) -> None:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{label} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  {label}: {time.perf_counter() - started:.0f} s", flush=True)


def build_hf(folder: str) -> None:
    """The random model, saved as bf16 safetensors (initialised on the GPU: seconds, not minutes)."""
    import torch
    import transformers

    config = transformers.Qwen2VLConfig.from_dict(QWEN2_VL_2B)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = transformers.Qwen2VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)


def train(work: str, name: str, data: str, iters: int, *overrides: str) -> list[dict]:
    out = os.path.join(work, name)
    if not os.path.isfile(os.path.join(out, "done")):
        _sh(f"train {name}", sys.executable, os.path.join(ROOT, "pretrain_omni.py"), f"data.path={data}",
            f"train.output_dir={out}", "train.overwrite=true",  # a run cut short before: again
            f"train.iters={iters}", *COMMON, *overrides)
        open(os.path.join(out, "done"), "w").close()
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(records: list[dict]) -> dict:
    steady = records[3:]  # warm-up: allocator, first-step planning
    keys = ("tokens_per_s", "mfu", "tflops_per_gpu", "step_time_s", "max_memory_gib",  # mfu, memory: GPU only
            "tokens", "micro_batches", "padding")
    return {key: statistics.median(r[key] for r in steady) for key in keys if key in steady[0]
            } | {"iterations": len(records), "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="where the data, the models and the runs go")
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--tag", default="", help="a name for the overrides below (the runs' folders, the JSON)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every training run")
    args = parser.parse_args()
    extra, tag = tuple(args.overrides), f"_{args.tag}" if args.tag else ""
    import megatron.core
    import torch
    import transformers

    data, hf, imported = (os.path.join(args.work, n) for n in ("data", "hf", "imported"))
    if not os.path.isfile(os.path.join(data, "meta.json")):
        _sh("synthetic data", sys.executable, os.path.join(ROOT, "tools", "make_synthetic_data.py"), "--out", data,
            "--samples", str(args.samples), "--mix", "image:0.5,video:0.1,text:0.4")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        started = time.perf_counter()
        build_hf(hf)
        print(f"  Hugging Face model: {time.perf_counter() - started:.0f} s", flush=True)
    if not os.path.isfile(os.path.join(imported, "model.yaml")):
        _sh("import", sys.executable, os.path.join(ROOT, "tools", "convert_hf.py"), "import", hf, imported)
    with open(os.path.join(imported, "model.yaml")) as f:
        model = _flatten(yaml.safe_load(f))
    runs = {
        "imported": summary(train(args.work, f"imported_run{tag}", data, args.iters, *model,
                                  f"checkpoint.load={os.path.join(imported, 'checkpoint')}", *extra)),
        "native": summary(train(args.work, f"native_run{tag}", data, args.iters, *model, *NATIVE, *extra)),
    }
    if not extra:  # where a difference comes from: the import's weights, or the encoder blocks' options
        runs["imported_from_scratch"] = summary(train(args.work, "scratch_run", data, args.iters, *model))
        runs["imported_native_blocks"] = summary(train(args.work, "blocks_run", data, args.iters, *model,
                                                       *NATIVE[:5]))
    ratio = {key: runs["imported"][key] / runs["native"][key] for key in ("tokens_per_s", "mfu")
             if key in runs["native"]}
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"\n{'run':<24}{'tokens/s':>10}{'MFU':>8}{'TFLOP/s':>9}{'s/step':>8}{'GiB':>7}{'tokens':>8}{'micro':>6}")
    for name, r in runs.items():
        print(f"{name:<24}{r['tokens_per_s']:>10.0f}{r.get('mfu', 0):>8.1%}{r['tflops_per_gpu']:>9.1f}"
              f"{r['step_time_s']:>8.2f}{r.get('max_memory_gib', 0):>7.1f}{r['tokens']:>8.0f}{r['micro_batches']:>6.0f}")
    print("imported / native: " + ", ".join(f"{k} {v:.3f}" for k, v in ratio.items()))
    write_result({"device": device, "torch": torch.__version__, "megatron_core": megatron.core.__version__,
                  "transformers": transformers.__version__, "hf_config": QWEN2_VL_2B, "common": COMMON + extra,
                  "native": NATIVE, "samples": args.samples, "runs": runs, "imported_over_native": ratio},
                 args.out, f"hf_import{tag}", device)


if __name__ == "__main__":
    main()
