"""Gaps of megatron-core releases we support, closed in one place (GPU and CPU alike).

- 0.16.1 without Transformer Engine: ``moe_utils.te_general_gemm`` is only defined when TE
  imports, yet the MoE router tests ``te_general_gemm is not None`` (a ``NameError``; fixed in
  0.19). It is defined as ``None`` so the router uses its torch path.
"""

from __future__ import annotations


def apply() -> None:
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
