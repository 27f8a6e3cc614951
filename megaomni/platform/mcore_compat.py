"""Gaps of megatron-core releases we support, closed in one place (GPU and CPU alike).

- 0.16.1 without Transformer Engine: ``moe_utils.te_general_gemm`` is only defined when TE
  imports, yet the MoE router tests ``te_general_gemm is not None`` (a ``NameError``; fixed in
  0.19). It is defined as ``None`` so the router uses its torch path.
- 0.16.1's distributed optimizer over torch's Adam (no TE or Apex): loading its state sets Adam's
  per-parameter ``step`` from the param groups, then copies every state tensor from the
  checkpoint's, which do not carry ``step`` (a ``KeyError``). The copy leaves ``step`` as set.
- 0.16.1 without Apex or TE: gradient clipping's fallback norm (``local_multi_tensor_l2_norm``)
  builds a host tensor of every gradient's norm, a GPU sync per tensor (1,831 a step on omni_moe's
  128 experts x 6 layers, measured in its profile), and its scaling and the optimizer's copies
  loop over tensors. Here they are ``torch._foreach_*`` calls: the same values, no sync.
- 0.16.1 without Apex or TE: Adam falls back to ``torch.optim.AdamW`` in its default (foreach)
  form, a dozen passes over the fp32 state where Apex's FusedAdam makes one. ``fuse_adam`` turns
  on torch's own fused kernel (``fused=True``) wherever torch has it for the parameters' device.
"""

from __future__ import annotations

import torch


def apply() -> None:
    from megatron.core.optimizer import clip_grads, distrib_optimizer
    from megatron.core.optimizer import optimizer as megatron_optimizer
    from megatron.core.transformer.moe import moe_utils
    from megatron.core.utils import local_multi_tensor_l2_norm, local_multi_tensor_scale

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    optimizer = distrib_optimizer.DistributedOptimizer
    if not distrib_optimizer.HAVE_APEX_OR_TE and not hasattr(optimizer, "_megaomni_keeps_step"):
        optimizer._set_main_param_and_optimizer_states = _keeping_step(optimizer._set_main_param_and_optimizer_states)
        optimizer._megaomni_keeps_step = True
    if clip_grads.l2_norm_impl is local_multi_tensor_l2_norm:
        clip_grads.l2_norm_impl = foreach_l2_norm
    if clip_grads.multi_tensor_scale_impl is local_multi_tensor_scale:
        clip_grads.multi_tensor_scale_impl = foreach_scale
    if megatron_optimizer.multi_tensor_scale_impl is local_multi_tensor_scale:
        megatron_optimizer.multi_tensor_scale_impl = foreach_scale
        megatron_optimizer._multi_tensor_copy_this_to_that = foreach_copy


def fuse_adam(optimizer) -> None:
    """Turns on torch's fused AdamW in every torch Adam under a megatron-core optimizer (chained,
    mixed precision or distributed) whose parameters all live on a device torch fuses for. Set
    before the first step, which creates the state as the fused kernel keeps it (``step`` on the
    parameters' device)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    fusable = set(_get_fused_kernels_supported_devices())
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_adam = getattr(inner, "optimizer", None)
        if not isinstance(torch_adam, torch.optim.Adam) or torch_adam.state:
            continue
        for group in torch_adam.param_groups:
            if group["params"] and all(p.device.type in fusable and p.is_floating_point() for p in group["params"]):
                group.update(fused=True, foreach=False)


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """``amp_C.multi_tensor_l2norm``'s result (the l2 norm of all tensors, float32 ``[1]``) on the
    tensors' device, with no host read."""
    tensors = [t for tensors in tensor_lists for t in tensors]
    norms = [n.float() for n in torch._foreach_norm(tensors)]
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """``amp_C.multi_tensor_scale``: ``dst = src * scale``, list by list."""
    sources, targets = tensor_lists
    if all(s is t for s, t in zip(sources, targets)):
        torch._foreach_mul_(targets, scale)
    else:
        torch._foreach_copy_(targets, torch._foreach_mul(sources, scale))


def foreach_copy(this, that, overflow_buf=None):
    """megatron-core's ``_multi_tensor_copy_this_to_that`` (main params <-> model params) in one call."""
    if this:
        torch._foreach_copy_(that, this)


def _keeping_step(set_states):
    def call(self, model_param, tensors):
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state.get(self.optimizer.param_groups[group_index]["params"][group_order], {})
        return set_states(self, model_param, {**{k: v for k, v in state.items() if k not in tensors}, **tensors})

    return call
