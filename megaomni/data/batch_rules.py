"""The step rules the loader and the configuration check share: how many samples and micro-batches
a step needs under a data-parallel layout (a failing rule is one ConfigError line)."""

from __future__ import annotations

from megaomni.checks import require
from megaomni.config import DataConfig, MoEConfig, OmniConfig, ParallelConfig


def check_batch_sizes(data: DataConfig, dp: int, min_micro: int = 1) -> None:
    """Packed: a step has samples enough for every rank's micro-batches. Padded: a global batch
    splits evenly into micro-batches on every data-parallel rank."""
    if data.packing:
        needed = dp * min_micro
        require(data.global_batch_tokens > 0 or data.global_batch_size >= needed,
                f"data.global_batch_size={data.global_batch_size}: must be >= {needed} (data-parallel ranks "
                f"{dp} x {min_micro} micro-batches each)")
        require(data.global_batch_tokens >= 0, f"data.global_batch_tokens={data.global_batch_tokens}: must be >= 0")
        # A step takes samples up to the budget alone, never more for the layout's sake: this
        # much holds a sample (of at most seq_length tokens) for every micro-batch of every rank.
        least = needed * data.seq_length
        require(not data.global_batch_tokens or data.global_batch_tokens >= least,
                f"data.global_batch_tokens={data.global_batch_tokens}: must be >= {least} (data-parallel ranks {dp} "
                f"x {min_micro} micro-batches each x data.seq_length={data.seq_length}), so that every step has a "
                "sample for each micro-batch under this layout and takes the same samples under any")
        return
    require(data.global_batch_tokens == 0, f"data.global_batch_tokens={data.global_batch_tokens}: dynamic "
            "batches need data.packing=true")
    per_step = data.micro_batch_size * dp
    require(data.micro_batch_size > 0 and data.global_batch_size > 0 and data.global_batch_size % per_step == 0,
             f"data.global_batch_size={data.global_batch_size}: must be a positive multiple of "
             f"data.micro_batch_size*data_parallel={data.micro_batch_size}*{dp}={per_step}")


def equal_micro_batches(moe: MoEConfig, par: ParallelConfig, dp: int) -> bool:
    """Every data-parallel rank must run the same number of micro-batches: expert all-to-alls
    inside the forward span the data-parallel ranks."""
    return moe.enabled and par.ep > 1 and dp > 1


def rows_padded_alone(cfg: OmniConfig) -> bool:
    """``data.row_padding``: each packed row padded to its own length (auto: without pipelining,
    whose stages exchange one shape; an MoE router leaves the padding out of its balancing, so the
    loss sees none of it either way)."""
    padding = cfg.data.row_padding
    return padding == "row" or (padding == "auto" and cfg.parallel.pp == 1)
