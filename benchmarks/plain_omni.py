"""A recipe's training speed in plain PyTorch (benchmarks/plain_model.py: no megatron-core), on
megaomni's own batches: the baseline megaomni must not fall behind (benchmarks/omni_bench.py
--baseline runs it beside the megaomni variants).

    python benchmarks/plain_omni.py --config examples/configs/vl_2b.yaml [--iters 8] [--skip 3]
        [--no-compile] [--json ROW.json] [OVERRIDE ...]

One step: every micro-batch of ``OmniDataLoader.next_step()`` (the same packing, hence the same
tokens), forward and backward each, the loss per answer token of the whole step (as megaomni's
per-token loss), then AdamW. With ``train.bf16`` the parameters are bf16 and the optimizer keeps
fp32 master weights and fp32 gradients, as megaomni's megatron-core optimizer does; gradients
are clipped to ``train.clip_grad``, no weight decay on biases and norms, warmup + cosine LR.
Tokens, model FLOPs and MFU are counted with megaomni's own code (megaomni.flops,
megaomni.training.throughput), the step timed as megaomni's trainer times it (from fetching the
batches to the loss on the host). Figures: over the steps after the first ``--skip``, as
omni_bench.py's (report.summarize).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from plain_model import PlainOmni  # benchmarks/: run as a script, this folder is on sys.path
from report import summarize

from megaomni.config import OmniConfig, TrainConfig, load_config
from megaomni.data.loader import OmniDataLoader
from megaomni.data.tokenizer import load_tokenizer
from megaomni.flops import FlopModel
from megaomni.models.build import padded_vocab_size
from megaomni.models.freeze import freeze
from megaomni.platform.distributed import pick_device
from megaomni.training.profiler import StepProfiler
from megaomni.training.throughput import batch_flops, peak_tflops
from megaomni.validation import validate


def build_plain(cfg: OmniConfig, vocab: int, tokenizer) -> PlainOmni:
    pads = tuple(tokenizer.media_pad_ids("vision")) if cfg.model.vision.enabled else ()
    model = PlainOmni(cfg.model, vocab, pads)
    freeze(model, cfg.model.freeze)
    return model


def lr_at(train: TrainConfig, iteration: int) -> float:
    """megatron-core's OptimizerParamScheduler as megaomni sets it: linear warmup, cosine decay."""
    if iteration <= train.warmup_iters:
        return train.lr * iteration / max(train.warmup_iters, 1)
    decay = max(train.iters, train.warmup_iters + 1) - train.warmup_iters
    progress = min((iteration - train.warmup_iters) / decay, 1.0)
    return train.min_lr + (train.lr - train.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class MasterAdamW:
    """AdamW on fp32 master copies of bf16 parameters (the parameters themselves when fp32)."""

    def __init__(self, params: list[torch.nn.Parameter], train: TrainConfig, fused: bool):
        self.params = [p for p in params if p.requires_grad]
        self.master = [p.detach().float().requires_grad_() if p.dtype != torch.float32 else p for p in self.params]
        groups = [{"params": [m for m in self.master if m.dim() > 1], "weight_decay": train.weight_decay},
                  {"params": [m for m in self.master if m.dim() <= 1], "weight_decay": 0.0}]
        self.clip = train.clip_grad
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2),
                                           eps=train.adam_eps, fused=fused)

    def step(self, lr: float) -> torch.Tensor:
        for m, p in zip(self.master, self.params):
            if m is not p:  # None where a part was not used (the vision tower in a text-only step)
                m.grad = None if p.grad is None else p.grad.float()
        norm = torch.nn.utils.clip_grad_norm_(self.master, self.clip) if self.clip else torch.zeros(())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        copies = [(p, m) for p, m in zip(self.params, self.master) if m is not p]
        if copies:
            with torch.no_grad():  # the bf16 parameters are leaves that require grad
                torch._foreach_copy_([p for p, _ in copies], [m for _, m in copies])
        for p in self.params + self.master:
            p.grad = None
        return norm


def train_steps(cfg: OmniConfig, iters: int, compile_layers: bool) -> list[dict]:
    """``iters`` training steps of the plain model on megaomni's batches; one record per step."""
    device = pick_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    vocab = padded_vocab_size(tokenizer.vocab_size, cfg.model.llm.vocab_size)
    dtype = torch.bfloat16 if cfg.train.bf16 else torch.float32
    model = build_plain(cfg, vocab, tokenizer).to(device=device, dtype=dtype)
    if compile_layers:
        model.compile_layers()
    optimizer = MasterAdamW(list(model.parameters()), cfg.train, fused=device.type == "cuda")
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    flop_model, peak = FlopModel.from_config(cfg.model, vocab), peak_tflops(device, cfg.train.peak_tflops)
    # logging.profile_start: the same profile as megaomni's trainer writes, in train.output_dir/profile.
    profiler = StepProfiler(cfg.logging.profile_start, cfg.logging.profile_steps, cfg.train.output_dir, 0, device)
    records = []
    try:
        for iteration in range(1, iters + 1):
            profiler.before(iteration)
            started = time.perf_counter()
            batches = loader.next_step()
            loss_tokens = sum(float(b.loss_mask.sum()) for b in batches)  # host tensors: no sync
            loss_sum = torch.zeros((), device=device)
            for batch in batches:
                on_device = batch.to(device)
                per_token = model(on_device)
                micro = (per_token * on_device.loss_mask.reshape(-1).float()).sum()
                (micro / max(loss_tokens, 1.0)).backward()
                loss_sum += micro.detach()
            grad_norm = optimizer.step(lr_at(cfg.train, iteration))
            loss = float(loss_sum) / max(loss_tokens, 1.0)  # the host waits for the step here
            step_time = time.perf_counter() - started
            profiler.after(iteration)
            tokens = sum(int((b.tokens != tokenizer.pad_id).sum()) for b in batches)
            tflops = sum(batch_flops(flop_model, b, tokenizer.pad_id) for b in batches) / step_time / 1e12
            records.append({"iteration": iteration, "loss": loss, "grad_norm": float(grad_norm), "tokens": tokens,
                            "tokens_per_s": tokens / step_time, "step_time_s": step_time, "tflops_per_gpu": tflops,
                            **({"mfu": tflops / peak} if peak else {}),
                            **({"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
                               if device.type == "cuda" else {}),
                            "micro_batches": len(batches),
                            **({"padding": loader.last_plan.padding} if loader.last_plan is not None else {})})
            print(json.dumps(records[-1]), flush=True)
    finally:
        loader.close()
    return records


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each transformer layer (default: on CUDA)")
    parser.add_argument("--json", default="", help="write the row here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    # train.iters as omni_bench.py sets it for megaomni's runs: the same LR schedule and checks.
    cfg = load_config(args.config, [f"train.iters={args.iters}", *args.overrides])
    validate(cfg, world_size=1)  # the recipe's checks, as pretrain_omni.py runs them
    if args.skip >= args.iters:
        parser.error(f"--skip={args.skip}: must be below --iters={args.iters}")
    compile_layers = pick_device(cfg.train.device).type == "cuda" if args.compile is None else args.compile
    row = {"variant": "plain_pytorch", **summarize(train_steps(cfg, args.iters, compile_layers), args.skip),
           "compile": compile_layers}
    mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
    print(f"plain_pytorch  {row['tokens_per_s']:.0f} tokens/s  {row['tflops_per_gpu']:.2f} TFLOP/s  MFU {mfu}  "
          f"{row['step_time_s']:.3f} s/step  peak {row['max_memory_gib'] or 0:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
    return row


if __name__ == "__main__":
    main()
