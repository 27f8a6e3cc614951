"""Rules a configuration must satisfy, checked before any process group or model exists.

Each failing rule raises :class:`~megaomni.config.ConfigError` with one line: the field, its
value and what would be valid.
"""

from __future__ import annotations

import glob
import os

from megaomni.config import DataConfig, OmniConfig
from megaomni.data import dali_decode
from megaomni.parallel.rules import check_parallel_layout
from megaomni.parallel.rules import divisors, require, sequence_multiple


def _check_positive(cfg: OmniConfig) -> None:
    for section, fields in (
        ("model.llm", ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                       "ffn_hidden_size", "max_seq_len")),
        ("model.vision", ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                          "patch_size", "merge_size")),
        ("model.audio", ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                         "n_mels", "sample_rate", "n_fft", "hop_length")),
        ("data", ("seq_length", "micro_batch_size", "global_batch_size")),
    ):
        obj = cfg
        for part in section.split("."):
            obj = getattr(obj, part)
        for name in fields:
            value = getattr(obj, name)
            require(value > 0, f"{section}.{name}={value}: must be a positive integer")


def _check_heads(prefix: str, hidden: int, heads: int, rope_multiple: int) -> None:
    require(hidden % heads == 0,
             f"{prefix}.hidden_size={hidden}: must be divisible by {prefix}.num_attention_heads={heads}")
    head_dim = hidden // heads
    require(head_dim % rope_multiple == 0,
             f"{prefix}.hidden_size/num_attention_heads={head_dim}: rotary embeddings need a head "
             f"dim divisible by {rope_multiple}")


def check_model(cfg: OmniConfig) -> None:
    llm, vision, audio = cfg.model.llm, cfg.model.vision, cfg.model.audio
    _check_heads("model.llm", llm.hidden_size, llm.num_attention_heads, 2)
    require(llm.num_attention_heads % llm.num_query_groups == 0,
             f"model.llm.num_query_groups={llm.num_query_groups}: must divide "
             f"num_attention_heads={llm.num_attention_heads} (valid: {divisors(llm.num_attention_heads)})")
    if vision.enabled:
        _check_heads("model.vision", vision.hidden_size, vision.num_attention_heads, 4)
    if audio.enabled:
        _check_heads("model.audio", audio.hidden_size, audio.num_attention_heads, 2)
        require(audio.downsample >= 2 and audio.downsample % 2 == 0,
                 f"model.audio.downsample={audio.downsample}: must be an even number >= 2 "
                 "(the stem halves the frame rate, the projector merges the rest)")
    if vision.enabled:
        cell = (vision.patch_size * vision.merge_size) ** 2
        require(cfg.data.max_pixels >= cell,
                 f"data.max_pixels={cfg.data.max_pixels}: must hold one merged patch, "
                 f"(model.vision.patch_size*merge_size)^2={cell}")
        require(cfg.data.min_pixels <= cfg.data.max_pixels,
                 f"data.min_pixels={cfg.data.min_pixels}: must not exceed data.max_pixels={cfg.data.max_pixels}")
    require(cfg.data.seq_length <= llm.max_seq_len,
             f"data.seq_length={cfg.data.seq_length}: must not exceed model.llm.max_seq_len={llm.max_seq_len}")


def check_parallel(cfg: OmniConfig, world_size: int) -> None:
    check_parallel_layout(cfg, world_size)
    par = cfg.parallel
    check_batch_sizes(cfg.data, world_size // (par.tp * par.pp * par.cp), min_micro_batches(cfg))
    if cfg.data.packing:
        check_packing(cfg, world_size // (par.tp * par.pp * par.cp))


def min_micro_batches(cfg: OmniConfig) -> int:
    """Micro-batches each data-parallel rank needs a step: the interleaved schedule needs pp."""
    return cfg.parallel.pp if cfg.parallel.vpp > 1 else 1


def check_batch_sizes(data: DataConfig, dp: int, min_micro: int = 1) -> None:
    """Packed: a step has samples enough for every rank's micro-batches. Padded: a global batch
    splits evenly into micro-batches on every data-parallel rank."""
    if data.packing:
        needed = dp * min_micro
        require(data.global_batch_tokens > 0 or data.global_batch_size >= needed,
                f"data.global_batch_size={data.global_batch_size}: must be >= {needed} (data-parallel ranks "
                f"{dp} x {min_micro} micro-batches each)")
        require(data.global_batch_tokens >= 0, f"data.global_batch_tokens={data.global_batch_tokens}: must be >= 0")
        return
    require(data.global_batch_tokens == 0, f"data.global_batch_tokens={data.global_batch_tokens}: dynamic "
            "batches need data.packing=true")
    per_step = data.micro_batch_size * dp
    require(data.micro_batch_size > 0 and data.global_batch_size > 0 and data.global_batch_size % per_step == 0,
             f"data.global_batch_size={data.global_batch_size}: must be a positive multiple of "
             f"data.micro_batch_size*data_parallel={data.micro_batch_size}*{dp}={per_step}")


def equal_micro_batches(cfg: OmniConfig, dp: int) -> bool:
    """Every data-parallel rank must run the same number of micro-batches: expert all-to-alls
    inside the forward span the data-parallel ranks."""
    return cfg.model.llm.moe.enabled and cfg.parallel.ep > 1 and dp > 1


def check_packing(cfg: OmniConfig, dp: int) -> None:
    data = cfg.data
    require(data.micro_batch_multiple >= 1, f"data.micro_batch_multiple={data.micro_batch_multiple}: must be >= 1")
    require(not equal_micro_batches(cfg, dp) or data.micro_batch_multiple % dp == 0,
            f"data.micro_batch_multiple={data.micro_batch_multiple}: must be a multiple of the data-parallel "
            f"size {dp} with parallel.ep={cfg.parallel.ep} (expert all-to-alls span data-parallel ranks, so every "
            "rank runs the same number of micro-batches)")
    for name in ("max_tokens", "max_patches", "max_audio_frames"):
        require(getattr(data, name) >= 0, f"data.{name}={getattr(data, name)}: must be >= 0 (0: no limit)")
    if data.max_tokens:
        require(data.max_tokens >= data.seq_length, f"data.max_tokens={data.max_tokens}: must be >= "
                f"data.seq_length={data.seq_length} (the longest sample fits one micro-batch)")
        multiple = sequence_multiple(cfg)
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


def check_train(cfg: OmniConfig) -> None:
    train = cfg.train
    require(train.lr > 0, f"train.lr={train.lr}: must be > 0")
    require(0 <= train.min_lr <= train.lr, f"train.min_lr={train.min_lr}: must be in [0, train.lr={train.lr}]")
    require(train.iters >= 0, f"train.iters={train.iters}: must be >= 0 (0: write the initial weights "
            "as a checkpoint and stop)")
    require(train.iters == 0 or 0 <= train.warmup_iters < train.iters,
            f"train.warmup_iters={train.warmup_iters}: must be in [0, train.iters={train.iters})")
    require(train.device in ("auto", "cpu", "cuda"), f"train.device={train.device!r}: valid: auto, cpu, cuda")
    require(cfg.checkpoint.save_interval >= 0,
             f"checkpoint.save_interval={cfg.checkpoint.save_interval}: must be >= 0 (0: only at the end)")
    require(cfg.logging.log_interval > 0, f"logging.log_interval={cfg.logging.log_interval}: must be > 0")


def check_paths(cfg: OmniConfig) -> None:
    data = cfg.data
    require(bool(data.path), "data.path is empty: set it to a directory of *.tar shards "
             "(make one with `python tools/make_toy_data.py --out DIR`)")
    for directory, _ in data.datasets():
        # Name the entry, and the whole value only when it lists several.
        where = f"data.path={directory}" if directory == data.path else f"data.path={data.path}: {directory}"
        require(os.path.isdir(directory), f"{where}: no such directory")
        require(bool(glob.glob(os.path.join(directory, "*.tar"))), f"{where}: holds no *.tar shards")
    tokenizer = data.tokenizer_path()
    require(os.path.isfile(tokenizer), f"data.tokenizer={tokenizer}: no such file "
             "(train one with tools/make_toy_data.py or point data.tokenizer at a .model file)")
    if cfg.checkpoint.load:
        require(os.path.exists(cfg.checkpoint.load), f"checkpoint.load={cfg.checkpoint.load}: no such path")


def validate(cfg: OmniConfig, world_size: int) -> None:
    _check_positive(cfg)
    check_model(cfg)
    check_parallel(cfg, world_size)
    check_decoder(cfg.data)
    check_data(cfg)
    check_train(cfg)
    check_paths(cfg)
