"""One micro-batch through the model, and the loss megatron-core's schedules back-propagate.

The loss is per-token: each micro-batch returns the sum of its answer-token losses and their
count; megatron-core (``calculate_per_token_loss``) divides the gradients by the step's total
token count across micro-batches and data-parallel ranks, so uneven micro-batches weigh right.
"""

from __future__ import annotations

from functools import partial

import torch

from megaomni.data.batch import Batch

# Order of the reduced step statistics (see reduce_step_stats).
STAT_KEYS = ("loss_sum", "loss_tokens", "answer_nll_sum", "samples")


def loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.float()
    masked = per_token_loss.float() * mask
    loss_sum = masked.sum()
    num_tokens = mask.sum().to(torch.int)
    # Per-sample answer NLL (sum over the answer's tokens): -log p(answer | prompt, media).
    answer_nll = masked.sum(dim=1)
    stats = torch.stack([loss_sum.detach(), mask.sum(), answer_nll.sum().detach(),
                         torch.tensor(float(mask.shape[0]), device=mask.device)])
    return loss_sum, num_tokens, {"stats": stats}


def make_forward_step(device: torch.device):
    def forward_step(data_iterator, model):
        batch: Batch = next(data_iterator).to(device)
        return model(batch), partial(loss_func, batch.loss_mask)

    return forward_step
