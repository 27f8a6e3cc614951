"""An MoE layer's local experts as two grouped GEMMs (megaomni.ops.grouped_gemm) instead of
megatron-core's loop of one MLP per expert.

The parameters are ``SequentialMLP``'s (``local_experts.{e}.linear_fc1/linear_fc2``), so
checkpoints, their resharding across EP and the Hugging Face tables stay as they are; only the
forward pass differs. The activation, the routing weights and their dtype casts are
megatron-core's own ``MLP.forward``, run once over all local experts' tokens with the two linears
grouped. ``pack_experts`` lays each linear's expert weights back to back in one tensor, so that
the grouped GEMM reads them as one (experts, out, in) view and copies none.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.moe.experts import SequentialMLP

from megaomni.ops.grouped_gemm import grouped_linear, placed_offsets, resolve


class _GroupedLinear:
    """Stands for an expert MLP's linear: every local expert's weight, each on its tokens."""

    def __init__(self, weights: list, offsets: torch.Tensor, impl: str):
        self.weights, self.offsets, self.impl = weights, offsets, impl

    def __call__(self, x: torch.Tensor):
        return grouped_linear(x, self.weights, self.offsets, self.impl), None


class _ExpertsAsOneMLP:
    """What ``MLP.forward`` reads of its module, for all local experts at once."""

    def __init__(self, experts, offsets: torch.Tensor, impl: str):
        first = experts[0]
        self.config, self.activation_func = first.config, first.activation_func
        self.linear_fc1 = _GroupedLinear([e.linear_fc1.weight for e in experts], offsets, impl)
        self.linear_fc2 = _GroupedLinear([e.linear_fc2.weight for e in experts], offsets, impl)


class GroupedExperts(SequentialMLP):
    """``impl``: a ``model.llm.moe.grouped_gemm`` name, resolved on the first forward pass (the
    device and dtype decide ``auto``)."""

    def __init__(self, num_local_experts, config, submodules, pg_collection=None, impl: str = "auto"):
        super().__init__(num_local_experts, config, submodules, pg_collection)
        self.impl = impl
        self._resolved = None

    def forward(self, permuted_local_hidden_states, tokens_per_expert, permuted_probs):
        x = permuted_local_hidden_states
        if self._resolved is None:
            # Expert biases and low-precision formats keep megatron-core's per-expert path.
            plain = not (self.config.add_bias_linear or self.config.fp8 or self.config.fp4
                         or self.config.moe_apply_probs_on_input)
            self._resolved = resolve(self.impl, x.device, x.dtype, self.num_local_experts) if plain else "loop"
        if self._resolved == "loop":
            return super().forward(x, tokens_per_expert, permuted_probs)
        # Counted on the host by the dispatcher; placed once for both linears.
        offsets = placed_offsets(torch.cumsum(tokens_per_expert, 0), x.device, self._resolved)
        return MLP.forward(_ExpertsAsOneMLP(self.local_experts, offsets, self._resolved), x, permuted_probs)


@torch.no_grad()
def pack_experts(module: torch.nn.Module) -> None:
    """Each ``GroupedExperts`` linear's weights moved into one (experts, out, in) tensor, each
    parameter a slice of it (values, names and parameter objects unchanged). Run after the model
    has its device and dtype (``Module.to`` gives every parameter a tensor of its own again);
    megatron-core's distributed optimizer moves them into its buffer, and the grouped GEMM then
    stacks them again (megaomni.ops.grouped_gemm.stacked)."""
    for experts in module.modules():
        if isinstance(experts, GroupedExperts):
            for linear in ("linear_fc1", "linear_fc2"):
                weights = [getattr(e, linear).weight for e in experts.local_experts]
                packed = torch.stack([w.data for w in weights])
                for weight, piece in zip(weights, packed):
                    weight.data = piece
