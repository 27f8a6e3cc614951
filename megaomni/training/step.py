"""One micro-batch through the model, and the loss megatron-core's schedules back-propagate.

The loss is per-token: each micro-batch returns the sum of its answer-token losses and their
count; megatron-core (``calculate_per_token_loss``) divides the gradients by the step's total
token count across micro-batches and data/context-parallel ranks, so uneven micro-batches weigh
right.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megaomni.data.batch import Batch
from megaomni.parallel.sequence import shard_tokens

# Order of the micro-batch statistics summed over ranks (see reduce_step_stats).
STAT_KEYS = ("loss_sum", "loss_tokens")


def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.float()
    masked = per_token_loss.float() * mask
    loss_sum = masked.sum()
    num_tokens = mask.sum().to(torch.int)
    # loss_sum is also the answer NLL (-log p(answer | prompt, media), summed over each answer's
    # tokens) summed over samples: the trainer divides it by the sample count as well.
    stats = torch.stack([loss_sum.detach(), mask.sum()])
    return loss_sum, num_tokens, {"stats": stats}


def make_forward_step(device: torch.device):
    def forward_step(data_iterator, model, features=None):
        batch: Batch = next(data_iterator).to(device)
        # Labels and loss mask of this rank's part of the sequence (context parallelism); the
        # model merges media into the whole sequence and cuts its embeddings the same way.
        loss_mask = shard_tokens(batch.loss_mask)
        # features: encoder outputs computed elsewhere (the joint schedule); None: the model encodes.
        output = model(batch.tokens, batch.position_ids, labels=shard_tokens(batch.labels),
                       cu_seqlens=batch.cu_seqlens, media=batch.media, features=features,
                       padding_mask=batch.padding_mask())
        return output, partial(loss_func, loss_mask)

    return forward_step


def reduce_step_stats(reports: list[dict], tokens: int, samples: int, flops: float, device) -> dict:
    """Sum the micro-batch statistics over data- and context-parallel ranks (each holds part of
    the sums), count tokens, samples and model FLOPs once per data-parallel rank, then share the
    last pipeline stage's totals with every stage (other stages contribute zeros)."""
    local = torch.zeros(len(STAT_KEYS) + 3, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for report in reports:
            local[: len(STAT_KEYS)] += report["stats"].to(local)
        if ps.get_context_parallel_rank() == 0:
            local[-3:] = torch.tensor([tokens, samples, flops], dtype=local.dtype)
    dist.all_reduce(local, group=ps.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(local, group=ps.get_pipeline_model_parallel_group())
    values = dict(zip(STAT_KEYS + ("tokens", "samples", "flops"), local.tolist()))
    return {
        "loss": values["loss_sum"] / max(values["loss_tokens"], 1.0),
        "answer_nll": values["loss_sum"] / max(values["samples"], 1.0),
        "tokens": int(values["tokens"]),
        "loss_tokens": int(values["loss_tokens"]),
        "flops": values["flops"],
    }
