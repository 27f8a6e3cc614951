"""Gaps of megatron-core releases we support, closed in one place (GPU and CPU alike).

- 0.16.1 without Transformer Engine: ``moe_utils.te_general_gemm`` is only defined when TE
  imports, yet the MoE router tests ``te_general_gemm is not None`` (a ``NameError``; fixed in
  0.19). It is defined as ``None`` so the router uses its torch path.
- 0.16.1's distributed optimizer over torch's Adam (no TE or Apex): loading its state sets Adam's
  per-parameter ``step`` from the param groups, then copies every state tensor from the
  checkpoint's, which do not carry ``step`` (a ``KeyError``). The copy leaves ``step`` as set.
"""

from __future__ import annotations


def apply() -> None:
    from megatron.core.optimizer import distrib_optimizer
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    optimizer = distrib_optimizer.DistributedOptimizer
    if not distrib_optimizer.HAVE_APEX_OR_TE and not hasattr(optimizer, "_megaomni_keeps_step"):
        optimizer._set_main_param_and_optimizer_states = _keeping_step(optimizer._set_main_param_and_optimizer_states)
        optimizer._megaomni_keeps_step = True


def _keeping_step(set_states):
    def call(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state.get(self.optimizer.param_groups[group_index]["params"][group_order], {})
        return set_states(self, model_param, {**{k: v for k, v in state.items() if k not in tensors}, **tensors})

    return call
