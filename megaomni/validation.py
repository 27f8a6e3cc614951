"""Rules a configuration must satisfy, checked before any process group or model exists.

Each failing rule raises :class:`~megaomni.config.ConfigError` with one line: the field, its
value and what would be valid.
"""

from __future__ import annotations

import glob
import os

from megaomni.checks import divisors, require, require_choice, require_heads, require_positive
from megaomni.config import RECOMPUTE_MODULES, DataConfig, OmniConfig
from megaomni.data import audio_in_video, energon
from megaomni.data.batch_rules import check_batch_sizes, equal_micro_batches
from megaomni.media import dali_decode, registry
from megaomni.models.freeze import frozen_leaves, leaf_prefixes, part_names
from megaomni.parallel.rules import check_parallel_layout
from megaomni.training.dashboards import WANDB_MODES, missing_packages


def check_model(cfg: OmniConfig) -> None:
    """The LLM's rules, then each enabled modality's own (``Modality.check``)."""
    llm = cfg.model.llm
    require_positive("model.llm", llm, ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                                        "ffn_hidden_size", "max_seq_len"))
    require_positive("data", cfg.data, ("seq_length", "micro_batch_size", "global_batch_size"))
    if llm.head_dim:
        require(llm.head_dim > 0 and llm.head_dim % 2 == 0, f"model.llm.head_dim={llm.head_dim}: must be a positive "
                "even number (rotary embeddings rotate pairs), or 0 for hidden_size / num_attention_heads")
    else:
        require_heads("model.llm", llm.hidden_size, llm.num_attention_heads, 2)
    require(llm.num_attention_heads % llm.num_query_groups == 0,
            f"model.llm.num_query_groups={llm.num_query_groups}: must divide "
            f"num_attention_heads={llm.num_attention_heads} (valid: {divisors(llm.num_attention_heads)})")
    if llm.mrope_section:
        half = (llm.head_dim or llm.hidden_size // llm.num_attention_heads) // 2
        require(len(llm.mrope_section) == 3 and min(llm.mrope_section) >= 0 and sum(llm.mrope_section) == half,
                f"model.llm.mrope_section={llm.mrope_section}: must be 3 non-negative sizes (temporal, height, "
                f"width) summing to head_dim/2={half}, or [] for plain RoPE")
    for modality in registry.enabled(cfg.model):
        modality.check(cfg)
    require(cfg.data.seq_length <= llm.max_seq_len,
            f"data.seq_length={cfg.data.seq_length}: must not exceed model.llm.max_seq_len={llm.max_seq_len}")
    check_freeze(cfg)
    check_recompute(cfg)
    check_kernels(cfg)


def check_recompute(cfg: OmniConfig) -> None:
    train = cfg.train
    require(train.recompute in ("none", "selective", "full"),
            f"train.recompute={train.recompute!r}: valid: none, selective, full")
    stacks = ["llm", *(m.name for m in registry.enabled(cfg.model))]
    for name in train.recompute_parts:
        require(name in stacks, f"train.recompute_parts=[{', '.join(train.recompute_parts)}]: unknown stack "
                f"{name!r} (valid: {', '.join(stacks)})")
    if train.recompute == "selective":
        modules = train.recompute_modules
        shown = f"train.recompute_modules=[{', '.join(modules)}]"
        require(modules, f"{shown}: selective recomputation needs at least one of {', '.join(RECOMPUTE_MODULES)}")
        for name in modules:
            require(name in RECOMPUTE_MODULES,
                    f"{shown}: unknown module {name!r} (valid: {', '.join(RECOMPUTE_MODULES)})")
        require(cfg.model.llm.moe.enabled or not {"moe", "shared_experts"} & set(modules),
                f"{shown}: moe and shared_experts need an MoE LLM (model.llm.moe.num_experts)")
        if "layernorm" in modules:  # megatron-core's norm checkpoint reads TE's FP8 state whenever it runs
            from megaomni.layers.specs import have_transformer_engine

            require(have_transformer_engine(),
                    f"{shown}: layernorm recomputation needs Transformer Engine (megatron-core's norm "
                    "checkpoint asks it for its FP8 state); leave layernorm out")


def check_kernels(cfg: OmniConfig) -> None:
    train = cfg.train
    for name, valid in (("cross_entropy", ("auto", "chunked", "megatron", "torch")),
                        ("fusion", ("auto", "compile", "layers", "none")),
                        ("encoder_attention", ("auto", "dense", "varlen"))):
        value = getattr(train, name)
        require(value in valid, f"train.{name}={value!r}: valid: {', '.join(valid)}")
    require(cfg.data.row_padding in ("auto", "row", "step"),
            f"data.row_padding={cfg.data.row_padding!r}: valid: auto, row, step")
    require(cfg.data.row_padding != "row" or cfg.parallel.pp == 1,
            f"data.row_padding=row at parallel.pp={cfg.parallel.pp}: pipeline stages exchange one activation shape "
            "a step; use step (or auto)")
    require(train.cross_entropy not in ("chunked", "torch") or cfg.parallel.tp == 1,
            f"train.cross_entropy={train.cross_entropy} at parallel.tp={cfg.parallel.tp}: this loss needs the "
            "whole vocabulary on one rank; use megatron (auto)")


def check_freeze(cfg: OmniConfig) -> None:
    """Known part names (of the enabled modalities), something left to train, and tied
    embeddings frozen whole: they are one weight, whose copies on the first and last pipeline
    stages megatron-core keeps equal by all-reducing their gradients (one copy frozen alone would
    leave the other stage waiting)."""
    names, listed = part_names(cfg.model), cfg.model.freeze
    shown = f"model.freeze=[{', '.join(listed)}]"
    for name in listed:
        require(name in names, f"{shown}: unknown part {name!r} (valid: {', '.join(names)})")
    frozen = frozen_leaves(cfg.model, listed)
    require(len(frozen) < len(leaf_prefixes(cfg.model)), f"{shown}: freezes every part, nothing would train "
            "(leave at least one part out)")
    require(not cfg.model.llm.tie_embeddings or ("llm.embedding" in frozen) == ("llm.output" in frozen),
            f"{shown}: with model.llm.tie_embeddings=true the embedding and output layer share one weight: "
            "freeze both llm.embedding and llm.output, or neither")


def check_parallel(cfg: OmniConfig, world_size: int) -> None:
    check_parallel_layout(cfg, world_size)
    par = cfg.parallel
    dp = par.data_parallel_size(world_size)
    check_batch_sizes(cfg.data, dp, par.min_micro_batches())
    if cfg.data.packing:
        check_packing(cfg, dp)


def check_packing(cfg: OmniConfig, dp: int) -> None:
    data = cfg.data
    require(data.micro_batch_multiple >= 1, f"data.micro_batch_multiple={data.micro_batch_multiple}: must be >= 1")
    require(not equal_micro_batches(cfg.model.llm.moe, cfg.parallel, dp) or data.micro_batch_multiple % dp == 0,
            f"data.micro_batch_multiple={data.micro_batch_multiple}: must be a multiple of the data-parallel "
            f"size {dp} with parallel.ep={cfg.parallel.ep} (expert all-to-alls span data-parallel ranks, so every "
            "rank runs the same number of micro-batches)")
    for name in ("max_tokens", "max_patches", "max_audio_frames"):
        require(getattr(data, name) >= 0, f"data.{name}={getattr(data, name)}: must be >= 0 (0: no limit)")
    if data.max_tokens:
        require(data.max_tokens >= data.seq_length, f"data.max_tokens={data.max_tokens}: must be >= "
                f"data.seq_length={data.seq_length} (the longest sample fits one micro-batch)")
        multiple = cfg.parallel.sequence_multiple()
        require(data.max_tokens % multiple == 0, f"data.max_tokens={data.max_tokens}: must be a multiple "
                f"of {multiple} (2*parallel.cp when cp > 1, times parallel.tp with parallel.sp)")


def check_decoder(data: DataConfig) -> None:
    require(data.decoder in ("auto", "pillow", "dali"), f"data.decoder={data.decoder!r}: valid: auto, pillow, dali")
    if data.decoder == "dali":
        problem = dali_decode.import_error()
        require(problem is None, f"data.decoder='dali': NVIDIA DALI is not importable ({problem}); install it "
                "(pip install -e .[dali]) or set data.decoder=auto (DALI when importable) or pillow")


def check_data(cfg: OmniConfig) -> None:
    data = cfg.data
    for name in ("workers", "max_video_frames"):
        require(getattr(data, name) >= 0, f"data.{name}={getattr(data, name)}: must be >= 0 (0: "
                f"{'decode in the training process' if name == 'workers' else 'no cap'})")
    audio_in_video.check(cfg)
    require(data.prefetch_steps >= 1, f"data.prefetch_steps={data.prefetch_steps}: must be >= 1")
    require(data.index in ("auto", "require"), f"data.index={data.index!r}: valid: auto (build a missing or stale "
            "index), require (an error instead)")
    if data.index == "require" and data.path:
        check_indexes(cfg)


def check_indexes(cfg: OmniConfig) -> None:
    """With data.index=require, every data set's index serves this run (before any rank starts),
    the evaluation sets' too."""
    from megaomni.data.index import StaleIndex, index_status
    from megaomni.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    sets = [("data.path", path) for path, _ in cfg.data.datasets()]
    sets += [("eval.path", path) for _, path in cfg.eval.sets()] if cfg.eval.interval else []
    for key, path in sets:
        try:
            _, why = index_status(path, tokenizer, cfg)
        except (StaleIndex, FileNotFoundError) as e:
            why = str(e)
        require(why is None, f"{key}={path}: {why} (data.index=require); build it: python tools/index_data.py "
                f"{path} --config YOUR_RECIPE.yaml")


def check_train(cfg: OmniConfig) -> None:
    train = cfg.train
    require(train.lr > 0, f"train.lr={train.lr}: must be > 0")
    require(0 <= train.min_lr <= train.lr, f"train.min_lr={train.min_lr}: must be in [0, train.lr={train.lr}]")
    require(train.iters >= 0, f"train.iters={train.iters}: must be >= 0 (0: write the initial weights "
            "as a checkpoint and stop)")
    require(train.iters == 0 or 0 <= train.warmup_iters < train.iters,
            f"train.warmup_iters={train.warmup_iters}: must be in [0, train.iters={train.iters})")
    require(train.device in ("auto", "cpu", "cuda"), f"train.device={train.device!r}: valid: auto, cpu, cuda")
    require(train.exit_grace_s >= 0, f"train.exit_grace_s={train.exit_grace_s}: must be >= 0 (0: always save "
            "when stopped by a signal)")
    require(train.collapse_steps >= 0, f"train.collapse_steps={train.collapse_steps}: must be >= 0 (0: no check)")
    require(train.spike_factor == 0 or train.spike_factor > 1, f"train.spike_factor={train.spike_factor}: must be "
            "> 1 (a loss that many times its recent mean stops the run), or 0 (no check)")
    require(train.step_timeout_s >= 0, f"train.step_timeout_s={train.step_timeout_s}: must be >= 0 (seconds a "
            "step phase may last before the run exits, longer than the slowest step or save; 0: off)")
    require(cfg.checkpoint.save_interval >= 0,
             f"checkpoint.save_interval={cfg.checkpoint.save_interval}: must be >= 0 (0: only at the end)")
    require(cfg.checkpoint.keep_last >= 0,
            f"checkpoint.keep_last={cfg.checkpoint.keep_last}: must be >= 0 (0: keep every checkpoint)")
    require(cfg.logging.log_interval > 0, f"logging.log_interval={cfg.logging.log_interval}: must be > 0")


def check_logging(cfg: OmniConfig) -> None:
    """The dashboards asked for can start (megaomni/training/dashboards.py)."""
    logging_cfg = cfg.logging
    require_choice("logging.wandb_mode", logging_cfg.wandb_mode, WANDB_MODES)
    require(logging_cfg.profile_start >= 0 and logging_cfg.profile_steps >= 1,
            f"logging.profile_start={logging_cfg.profile_start}, logging.profile_steps={logging_cfg.profile_steps}: "
            "the start must be >= 0 (0: off) and the steps >= 1")
    for name, package in missing_packages(logging_cfg).items():
        require(False, f"logging.{name}={getattr(logging_cfg, name)}: needs the {package} package, not installed: "
                f"pip install {package} (or leave logging.{name} empty)")


def check_paths(cfg: OmniConfig) -> None:
    data = cfg.data
    require(bool(data.path), "data.path is empty: set it to a directory of *.tar shards "
             "(make one with `python tools/make_toy_data.py --out DIR`)")
    check_dataset_dirs("data.path", data.path, [directory for directory, _ in data.datasets()])
    tokenizer = data.tokenizer_path()
    require(os.path.isfile(tokenizer) or os.path.isfile(os.path.join(tokenizer, "tokenizer.json")),
             f"data.tokenizer={tokenizer}: no such file, nor a folder holding tokenizer.json (train one with "
             "tools/make_toy_data.py, or point data.tokenizer at a .model file or a Hugging Face model folder)")


def check_dataset_dirs(key: str, value: str, directories: list[str]) -> None:
    """Each directory a data set in a format the loader reads."""
    for directory in directories:
        # Name the entry, and the whole value only when it lists several.
        where = f"{key}={directory}" if directory == value else f"{key}={value}: {directory}"
        require(os.path.isdir(directory), f"{where}: no such directory")
        if energon.is_prepared(directory):  # its train split's shards, in subfolders too
            try:
                energon.shards(directory)
            except (OSError, energon.EnergonError) as e:
                require(False, f"{where}: {e}")
        else:
            require(bool(glob.glob(os.path.join(directory, "*.tar"))), f"{where}: holds no *.tar shards")


def check_eval(cfg: OmniConfig) -> None:
    """Evaluation's settings, and its sets' directories when it is on."""
    ev = cfg.eval
    require(ev.interval >= 0, f"eval.interval={ev.interval}: must be >= 0 (0: no evaluation)")
    if not ev.interval:
        return
    require(bool(ev.path), f"eval.interval={ev.interval}: needs eval.path (held-out data sets, DIR or NAME=DIR, "
            "comma-separated), or set eval.interval=0")
    require(ev.iters >= 1, f"eval.iters={ev.iters}: must be >= 1 (steps per eval set)")
    sets = ev.sets()
    names = [name for name, _ in sets]
    for name, directory in sets:
        require(bool(name) and bool(directory) and names.count(name) == 1,
                f"eval.path={ev.path}: {name or '(empty)'}={directory or '(empty)'}: each set needs a directory and "
                "a name of its own (name one with NAME=DIR)")
    check_dataset_dirs("eval.path", ev.path, [directory for _, directory in sets])


EMBEDDING = "llm.embedding.word_embeddings.weight"  # its rows: the padded vocabulary


def check_resume(cfg: OmniConfig, world_size: int) -> None:
    """The checkpoint to load is whole (megaomni/checkpoint/check.py: one line naming the damaged
    file; a root's damaged newest checkpoint is passed over) and fits this run."""
    if not cfg.checkpoint.load:
        return
    require(os.path.exists(cfg.checkpoint.load), f"checkpoint.load={cfg.checkpoint.load}: no such path")
    # Imported here, only for a run that loads one: megatron-core's checkpointing pulls in its
    # optimizer and FSDP code, whose imports warn about optional packages.
    from megaomni.checkpoint.changes import check_resumed_config
    from megaomni.checkpoint.check import find_checkpoint, load_common, saved_shapes
    from megaomni.data.tokenizer import load_tokenizer
    from megaomni.models.build import padded_vocab_size

    path, _ = find_checkpoint(cfg.checkpoint.load, world_size)
    common = load_common(path)
    check_resumed_freeze(cfg, common)
    vocab = padded_vocab_size(load_tokenizer(cfg.data.tokenizer_path()).vocab_size, cfg.model.llm.vocab_size)
    check_resumed_config(cfg, common, (saved_shapes(path)[EMBEDDING][0], vocab))


def check_resumed_freeze(cfg: OmniConfig, common: dict) -> None:
    """A full checkpoint resumes under the freeze list it was saved with: its optimizer state
    covers the parts that trained, and only those. Weights alone (a weights-only checkpoint, or
    ``checkpoint.finetune``) load under any."""
    if common.get("weights_only") or cfg.checkpoint.finetune:
        return
    saved, listed, names = common["config"]["model"].get("freeze", []), cfg.model.freeze, part_names(cfg.model)
    same = all(n in names for n in saved) and frozen_leaves(cfg.model, saved) == frozen_leaves(cfg.model, listed)
    require(same, f"checkpoint.load={cfg.checkpoint.load}: saved with model.freeze=[{', '.join(saved)}], loaded with "
            f"[{', '.join(listed)}]: a checkpoint resumes with the freeze list it was saved with; to change it, "
            "start a next stage from its weights (checkpoint.finetune=true)")


def validate(cfg: OmniConfig, world_size: int) -> None:
    check_model(cfg)
    check_parallel(cfg, world_size)
    check_decoder(cfg.data)
    check_data(cfg)
    check_train(cfg)
    check_logging(cfg)
    check_paths(cfg)
    check_eval(cfg)
    check_resume(cfg, world_size)
