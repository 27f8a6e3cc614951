"""Which part of the LLM sequence a rank computes, under context and sequence parallelism.

Context parallelism (megatron-core's arrangement): the sequence is cut into ``2 * cp`` equal
chunks and CP rank ``r`` holds chunks ``r`` and ``2 * cp - 1 - r``, so that every rank gets the
same share of causal-attention work. Sequence parallelism then splits this rank's part evenly
over the tensor-parallel ranks (megatron-core gathers it back around attention and the MLP).

The omni model merges encoder outputs into the whole sequence's embeddings and hands them to
:func:`embedding_sharder`; the training step cuts labels and loss masks with :func:`shard_tokens`.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from megaomni.ops.context_parallel import cp_positions


def _local_positions(seq_len: int, device) -> torch.Tensor | None:
    cp = ps.get_context_parallel_world_size()
    return None if cp == 1 else cp_positions(seq_len, cp, ps.get_context_parallel_rank(), device)


def shard_tokens(values: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` per-token values (labels, loss mask) -> this CP rank's ``[b, s_cp]``."""
    positions = _local_positions(values.shape[1], values.device)
    return values if positions is None else values.index_select(1, positions)


def embedding_sharder(sequence_parallel: bool):
    """``shard(embeddings)``: whole-sequence ``[s, b, h]`` -> this rank's part (its CP chunks,
    then its SP slice)."""

    def shard(embeddings: torch.Tensor) -> torch.Tensor:
        positions = _local_positions(embeddings.shape[0], embeddings.device)
        if positions is not None:
            embeddings = embeddings.index_select(0, positions)
        if sequence_parallel:
            # Backward all-gathers: every TP rank gets the whole gradient of the embeddings, so
            # encoders replicated over the TP ranks receive identical gradients on each.
            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
        return embeddings

    return shard
