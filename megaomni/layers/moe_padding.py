"""megatron-core's MoE balancing with a padding mask, made independent of the layout.

The omni model hands an MoE router its packed rows' padding (``padding_mask``), which the
balancing (aux loss, expert bias) leaves out. With a mask, megatron-core (0.16.1 to 0.19.2)
scales each rank's aux-loss gradient by that rank's own count of valid tokens; without one, by
its share of the tensor/context-parallel group's tokens (``routing_map.shape[0]``, the same on
every rank). Under sequence or context parallelism the padding lies on some ranks only, so the
counts differ and the router's gradients part from one process's (tests/parallel: MoE tp2_sp).
Here every rank counts the group's valid tokens over its size, as it does without a mask."""

from __future__ import annotations

from megatron.core.transformer.moe import router

_group_counts = router.get_tokens_per_expert_and_token_count


def _even_share(routing_map, reduce_group, topk=None, with_padding_mask=False):
    tokens_per_expert, local, total = _group_counts(routing_map, reduce_group, topk=topk,
                                                   with_padding_mask=with_padding_mask)
    return tokens_per_expert, (total / reduce_group.size() if with_padding_mask else local), total


router.get_tokens_per_expert_and_token_count = _even_share
