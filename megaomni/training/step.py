"""One micro-batch through the model, and the loss megatron-core's schedules back-propagate.

The loss is per-token: each micro-batch returns the sum of its answer-token losses and their
count; megatron-core (``calculate_per_token_loss``) divides the gradients by the step's total
token count across micro-batches and data/context-parallel ranks, so uneven micro-batches weigh
right.
"""

from __future__ import annotations

from functools import partial

import torch

from megaomni.data.batch import Batch
from megaomni.parallel.sequence import shard_tokens

# Order of the micro-batch statistics summed over ranks (see trainer.reduce_step_stats).
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
                       cu_seqlens=batch.cu_seqlens, media=batch.media, features=features)
        return output, partial(loss_func, loss_mask)

    return forward_step
