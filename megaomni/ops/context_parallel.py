"""Context parallelism for our attention core: megatron-core's load-balanced sequence chunks and
the exchange of keys/values over the CP group.

CP rank ``r`` of ``cp`` holds chunks ``r`` and ``2*cp - 1 - r`` of a sequence cut into ``2*cp``
equal chunks (the early, cheap chunk paired with a late, expensive one under a causal mask).
Attention gathers every rank's keys and values (all-gather forward, reduce-scatter backward) and
masks by the tokens' positions in the whole sequence, so no reordering is needed. Simple, exact,
and memory ``O(s_local * s)`` per head; a ring exchange is the faster path for long contexts.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region


def sequence_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Index of the sequence each of ``total`` tokens belongs to, from cumulative lengths.

    A search, not ``repeat_interleave`` (whose output length is read on the host, a GPU sync);
    the coverage check runs where reading it is free (boundaries on the host)."""
    if not cu_seqlens.is_cuda and int(cu_seqlens[-1] - cu_seqlens[0]) != total:
        raise ValueError(f"cu_seqlens covers {int(cu_seqlens[-1] - cu_seqlens[0])} tokens but the input has {total}")
    positions = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype) + cu_seqlens[0]
    return torch.searchsorted(cu_seqlens[1:].contiguous(), positions, right=True)


def cp_positions(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """Positions (in the whole sequence) of the tokens CP rank ``cp_rank`` holds, in order."""
    if seq_len % (2 * cp_size):
        raise ValueError(f"sequence length {seq_len} is not divisible by 2*cp={2 * cp_size}")
    chunk = seq_len // (2 * cp_size)
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk, device=device)
    second = torch.arange((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk, device=device)
    return torch.cat([first, second])


def gather_keys_values(key: torch.Tensor, value: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """``[s_local, ...]`` on every CP rank -> ``[cp * s_local, ...]`` in CP-rank order."""
    return tuple(gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=True, group=group)
                 for x in (key, value))


def causal_cp_mask(local_len: int, group, device, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """``[s_local, cp * s_local]`` boolean mask, True where this rank's queries may attend to the
    gathered keys: keys at or before the query in the whole sequence and, for a packed sequence
    (``cu_seqlens`` over the whole sequence), in the same sample."""
    cp, rank = group.size(), group.rank()
    total = local_len * cp
    q_pos = cp_positions(total, cp, rank, device)
    k_pos = torch.cat([cp_positions(total, cp, r, device) for r in range(cp)])
    allowed = q_pos[:, None] >= k_pos[None, :]
    if cu_seqlens is not None:
        sample = sequence_ids(cu_seqlens.to(device), total)
        allowed &= sample[q_pos][:, None] == sample[k_pos][None, :]
    return allowed
