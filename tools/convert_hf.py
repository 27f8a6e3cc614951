"""Hugging Face models in and out of megaomni (the LLM families of megaomni.checkpoint.hf).

    python tools/convert_hf.py import HF_DIR OUT [--tp N --pp N ...]  # OUT/checkpoint + OUT/model.yaml
    python tools/convert_hf.py export CKPT OUT_DIR   # safetensors + config.json + tokenizer files
    python tools/convert_hf.py verify HF_DIR CKPT    # the largest logit difference on a built-in input

The imported checkpoint holds the weights only (``iter_0000000``): ``checkpoint.load=OUT/checkpoint``
starts a run from them under any parallel layout (checkpoints reshard on load). ``model.yaml`` is
the recipe's ``model`` section for that checkpoint, and its ``parallel`` section with the layout
flags (checked against the model: one line where it does not fit). The checkpoint also keeps the
architecture, config.json and tokenizer / processor files of HF_DIR, and so does every checkpoint
trained from it: ``export`` of a trained checkpoint writes a complete folder. Runs in one process,
on the GPU where there is one.

``verify`` builds both models (fp32) and runs one input through both: where HF_DIR holds a
tokenizer, a conversation with an image, a video and a clip (those the family takes and the
model has enabled; megaomni.checkpoint.hf.probe) and text, made by megaomni's data pipeline
with that tokenizer and the checkpoint's processors; else 2 x 32 random tokens. It prints the
largest logit difference and what the input held, and exits 0 (``--tolerance``: 1 above it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import yaml

LAYOUT = ("tp", "pp", "vpp", "cp", "ep")  # import's flags: the recipe's parallel layout
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megaomni.checkpoint.hf.convert import (  # noqa: E402
    export_hf,
    import_hf,
    load_state,
    model_config,
    read_tokenizer_files,
)
from megaomni.checkpoint.hf.mapping import MappingError  # noqa: E402
from megaomni.config import (  # noqa: E402
    ConfigError,
    OmniConfig,
    ParallelConfig,
    PipelineConfig,
    config_from_dict,
)


def _model(cfg: OmniConfig, media_pad_id=lambda name: 0):
    """The whole model in this process (one rank, CPU); ``media_pad_id`` as build_model's."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    from megaomni.parallel.model_chunks import build_model_chunks
    from megaomni.platform.distributed import init_distributed

    cfg.train.device = "auto"  # the GPU where there is one: megaomni's CPU mode refuses a CUDA machine
    cfg.parallel, cfg.pipeline = ParallelConfig(), PipelineConfig()
    init_distributed(cfg)
    return build_model_chunks(cfg, cfg.model.llm.vocab_size, media_pad_id)


def _from_checkpoint(path: str, media_pad_id=lambda name: 0):
    """The model of a megaomni checkpoint, its weights loaded, and the checkpoint's common state."""
    from megatron.core import dist_checkpointing

    from megaomni.checkpoint.dist_ckpt import load_weights, resolve_checkpoint

    path = resolve_checkpoint(path)
    common = dist_checkpointing.load_common_state_dict(path)
    cfg = config_from_dict(common["config"])
    chunks = _model(cfg, media_pad_id)
    load_weights(path, chunks)
    return cfg, chunks, common


def cmd_import(args) -> None:
    from megaomni.checkpoint.dist_ckpt import save_checkpoint
    from megaomni.parallel.rules import check_parallel_layout

    imported = import_hf(args.hf_dir)
    architecture, state = imported.architecture, imported.state
    cfg = OmniConfig(model=model_config(imported.sections))
    layout = {name: getattr(args, name) for name in LAYOUT if getattr(args, name) != 1}
    recipe = {"model": cfg.to_dict()["model"], **({"parallel": layout} if layout else {})}
    # The checkpoint is the same for every layout (it reshards on load): the layout is the recipe's,
    # checked against the model here (the data-parallel size is whatever the world leaves).
    tp, pp, cp, ep = (layout.get(n, 1) for n in ("tp", "pp", "cp", "ep"))
    check_parallel_layout(config_from_dict({**recipe, "parallel": layout}), pp * math.lcm(tp * cp, ep * tp))
    chunks = _model(cfg)
    load_state(chunks[0], state)
    path = save_checkpoint(os.path.join(args.out, "checkpoint"), 0, chunks, None, None, weights_only=True,
                           common={"config": cfg.to_dict(), "hf_architecture": architecture,
                                   "hf_config": imported.hf_config, "hf_files": read_tokenizer_files(args.hf_dir)})
    with open(os.path.join(args.out, "model.yaml"), "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    print(f"imported {architecture} ({sum(t.numel() for t in state.values()) / 1e6:.1f}M parameters): {path}, "
          f"{os.path.join(args.out, 'model.yaml')}")


def cmd_export(args) -> None:
    cfg, chunks, common = _from_checkpoint(args.checkpoint)
    architecture = args.architecture or common.get("hf_architecture")
    if not architecture:
        raise MappingError("the checkpoint was not imported from Hugging Face: name --architecture")
    export_hf(cfg.model, chunks[0].state_dict(), args.out, architecture, common.get("hf_config"),
              common.get("hf_files"))
    print(f"exported {architecture}: {args.out}")


def _random_tokens(cfg: OmniConfig, model, hf) -> tuple[torch.Tensor, torch.Tensor]:
    """megaomni's and Hugging Face's logits of 2 x 32 random tokens (the LLM alone)."""
    tokens = torch.randint(0, cfg.model.llm.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(tokens.shape[1]).expand(3, *tokens.shape)
    device = next(model.parameters()).device
    with torch.no_grad():
        got = model.llm(input_ids=tokens.to(device), position_ids=positions.to(device), attention_mask=None)
        return got.float().cpu(), hf(input_ids=tokens).logits


def cmd_verify(args) -> int:
    import transformers

    from megaomni.checkpoint.hf import probe
    from megaomni.errors import BadSample
    from megaomni.media import registry

    torch.backends.cudnn.allow_tf32 = False  # fp32 convolutions on a GPU too (the audio stem; matmuls are already)
    tokenizer, why = probe.tokenizer_of(args.hf_dir)
    cfg, chunks, common = _from_checkpoint(args.checkpoint, tokenizer.media_pad_ids if tokenizer else lambda name: 0)
    architecture = common.get("hf_architecture") or "AutoModelForCausalLM"
    hf = getattr(transformers, architecture).from_pretrained(args.hf_dir, dtype=torch.float32).eval()
    built = None
    if tokenizer is not None:
        try:
            built = probe.build_probe(tokenizer, cfg, architecture)
        except BadSample as e:  # a chat template that cannot frame it, media the processors refuse
            why = f"the probe cannot be made ({e})"
    if built is not None:
        with torch.no_grad():
            want = hf(**probe.hf_inputs(architecture, built, hf.config)).logits
        got, held = probe.logits(chunks[0], built), f"probe: {built.describe()}"
        ours, theirs = probe.losses(chunks[0], hf, architecture, built)
        print(f"first-step loss on the probe's answer: {ours:.6f} megaomni, {theirs:.6f} Hugging Face")
    else:
        got, want = _random_tokens(cfg, chunks[0], hf)
        media = registry.enabled(cfg.model)
        held = "2 x 32 random tokens, text only" + (f"; media not probed: {why}" if media else f" ({why})")
    difference = (got - want).abs().max().item()
    print(f"largest logit difference: {difference:.3e} (logits up to {want.abs().max().item():.2f}; {held}; fp32)")
    if args.tolerance is not None and not difference <= args.tolerance:
        print(f"convert_hf: the difference exceeds --tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    imp = verbs.add_parser("import", help="Hugging Face folder -> megaomni checkpoint + model.yaml")
    imp.add_argument("hf_dir")
    imp.add_argument("out")
    for name in LAYOUT:
        imp.add_argument(f"--{name}", type=int, default=1,
                         help=f"the recipe's parallel.{name} (checked against the model)")
    exp = verbs.add_parser("export", help="megaomni checkpoint -> Hugging Face folder")
    exp.add_argument("checkpoint")
    exp.add_argument("out")
    exp.add_argument("--architecture", help="e.g. Qwen2ForCausalLM (default: the one imported from)")
    ver = verbs.add_parser("verify", help="logits of the Hugging Face model against the checkpoint's")
    ver.add_argument("hf_dir")
    ver.add_argument("checkpoint")
    ver.add_argument("--tolerance", type=float, help="exit 1 where the difference exceeds it (default: report only)")
    args = parser.parse_args(argv)
    try:
        return {"import": cmd_import, "export": cmd_export, "verify": cmd_verify}[args.verb](args) or 0
    except (MappingError, ConfigError, FileNotFoundError) as err:
        print(f"convert_hf: {err}", file=sys.stderr)
        return 2
    finally:
        from megaomni.platform.distributed import shutdown
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
