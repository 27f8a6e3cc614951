"""What a checkpoint holds, and whether it is whole: ``python tools/inspect_checkpoint.py CKPT``.

CKPT: an iteration directory (``iter_N``) or a checkpoint root holding ``latest`` (the checkpoint
``checkpoint.load=CKPT`` would resume from: damaged newer ones are named and passed over, as a
resume does). Prints the saved config's summary, the iteration, the layout it was saved under
(tp / pp / vpp / cp / ep, and dp from the world size), and the parameters per part of the model
(those ``model.freeze`` names: the LLM's embedding, decoder and output layer, each encoder and
its projector), counted from the checkpoint's index without loading a tensor.

Every piece is checked as a resume checks it (megaomni/checkpoint/check.py: present, as long
as the index says, each saved item where the index puts it, every rank's RNG state readable).
Exit codes: 0 whole; 2 damaged or not a checkpoint (one line on stderr naming the file).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# megatron-core warns once per missing optional package (TE, apex) as its checkpointing is imported.
warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")

from megaomni.checkpoint.check import (  # noqa: E402
    OPTIMIZER_STEP,
    WORLD_SIZE,
    CheckpointError,
    checkpoint_problem,
    find_checkpoint,
    load_common,
    saved_shapes,
)
from megaomni.checkpoint.dist_ckpt import ORIGIN_KEYS, _is_weight  # noqa: E402
from megaomni.config import ModelConfig, OmniConfig, config_from_dict  # noqa: E402
from megaomni.media import registry  # noqa: E402
from megaomni.models.freeze import _leaf, leaf_prefixes  # noqa: E402
from megaomni.validation import EMBEDDING  # noqa: E402

LAYOUT = ("tp", "pp", "vpp", "cp", "ep")
OTHER = "other"  # a saved weight no part of the model names (a registered module's, say)


def parameter_counts(shapes: dict[str, tuple | None], model_cfg: ModelConfig) -> dict[str, int]:
    """Parameters per leaf part of the model (``llm.embedding``, ``vision.projector``, ...), per
    group (``llm``, ``vision``, ...) and in all (``total``), from the checkpoint's index
    (``saved_shapes``): each weight's global shape, whatever the layout it was saved under."""
    prefixes = leaf_prefixes(model_cfg)
    leaves = dict.fromkeys(prefixes, 0)
    for key, shape in shapes.items():
        if shape is not None and _is_weight(key):
            try:
                leaf = _leaf(key, prefixes)
            except ValueError:
                leaf = OTHER
            leaves[leaf] = leaves.get(leaf, 0) + math.prod(shape)
    counts: dict[str, int] = {}
    for leaf, count in leaves.items():
        group = leaf.partition(".")[0]
        counts[group] = counts.get(group, 0) + count
        if group != leaf:
            counts[leaf] = count
    counts["total"] = sum(leaves.values())
    return counts


def _stack(section) -> str:
    return (f"{section.num_layers} layers, hidden {section.hidden_size}, {section.num_attention_heads} heads, "
            f"ffn {section.ffn_hidden_size}")


def summary(cfg: OmniConfig, common: dict, vocab: int) -> list[str]:
    llm, moe = cfg.model.llm, cfg.model.llm.moe
    world = common.get(WORLD_SIZE)
    layout = " ".join(f"{name}={getattr(cfg.parallel, name)}" for name in LAYOUT)
    dp = cfg.parallel.data_parallel_size(world) if world else "?"
    kind = "weights only" if common.get("weights_only") else \
        f"full: model, optimizer (step {common.get(OPTIMIZER_STEP)}), LR schedule" + \
        (", data position" if "data" in common else "")
    lines = [
        f"iteration: {common.get('iteration')} ({kind})",
        f"layout: {layout} dp={dp} (saved by {world} ranks; sp={str(cfg.parallel.sp).lower()}, "
        f"distributed_optimizer={str(cfg.parallel.distributed_optimizer).lower()})",
        f"llm: {_stack(llm)} ({llm.num_query_groups} query groups), vocab {vocab}"
        + (f", {moe.num_experts} experts (top {moe.top_k})" if moe.enabled else ""),
        *(f"{m.name}: {_stack(getattr(cfg.model, m.name))}" for m in registry.enabled(cfg.model)),
        f"freeze: {', '.join(cfg.model.freeze) or 'none'}",
        f"train: lr {cfg.train.lr:g} (min {cfg.train.min_lr:g}, warmup {cfg.train.warmup_iters}), "
        f"iters {cfg.train.iters}, global batch {cfg.data.global_batch_size}, seq_length {cfg.data.seq_length}",
        f"data: {cfg.data.path or '(none)'} (tokenizer {cfg.data.tokenizer_path()})",
    ]
    if "hf_architecture" in common:
        lines.append(f"imported from Hugging Face: {common['hf_architecture']} (keeps {', '.join(ORIGIN_KEYS[1:])})")
    return lines


def inspect(checkpoint: str) -> list[str]:
    """The report's lines; raises CheckpointError (one line) for a damaged one."""
    path, passed_over = find_checkpoint(checkpoint)
    common = load_common(path)
    # Checked again with the saver's world size: each of its ranks' RNG states too.
    problem = checkpoint_problem(path, common.get(WORLD_SIZE))
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    cfg = config_from_dict(common["config"])
    shapes = saved_shapes(path)
    counts = parameter_counts(shapes, cfg.model)
    width = max(map(len, counts)) + 4
    indent = {name: "  " * ("." in name) for name in counts}  # a part under its group
    return [
        f"checkpoint: {path} (whole)",
        *(f"passed over (damaged): {line}" for line in passed_over),
        *summary(cfg, common, shapes[EMBEDDING][0]),
        "parameters:",
        *(f"  {indent[name]}{name:<{width - len(indent[name])}} {count:>15,d}" for name, count in counts.items()),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="an iteration directory (iter_N) or the root holding `latest`")
    args = parser.parse_args(argv)
    if not os.path.exists(args.checkpoint):
        print(f"{args.checkpoint}: no such path", file=sys.stderr)
        return 2
    try:
        lines = inspect(args.checkpoint)
    except CheckpointError as err:
        print(str(err).removeprefix("checkpoint.load="), file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
