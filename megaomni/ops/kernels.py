"""Which kernels run (``train.cross_entropy``, ``train.fusion``, ``train.encoder_attention``; each
``auto``: megatron-core's loss, fusion on a GPU only, varlen attention), and the fusions
megatron-core leaves to Transformer Engine.

Fusion (``compile``; ``auto``: on a GPU) turns each elementwise chain into one kernel each way:
megatron-core's own bias + dropout + residual and SwiGLU / biased-GELU fusions (its ``jit_fuser``
is ``torch.compile``); the activations it does not fuse (QuickGELU, tanh GELU) and both rotary
paths (megatron-core's unfused one in the LLM, our attention core's in the encoders) compiled
here. None of it changes a weight, only rounding: one bf16 rounding per chain instead of per op.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.transformer.enums import AttnBackend

from megaomni.config import OmniConfig
from megaomni.platform.distributed import pick_device

_UNFUSED_ROTARY = rope_utils._apply_rotary_pos_emb_bshd
# auto: varlen. Dense per-length calls ran 1.4x varlen on fixed shapes but 0.55x end to end on
# vl_2b (cuDNN builds a plan for every new length; images of many sizes bring new ones every step).
ENCODER_ATTENTION = {"auto": AttnBackend.flash, "dense": AttnBackend.fused, "varlen": AttnBackend.flash}


@dataclass(frozen=True)
class Kernels:
    chunked_loss: bool  # megaomni.ops.cross_entropy instead of megatron-core's loss
    fusion: bool
    encoder_attention: AttnBackend  # read by megaomni.ops.attention (fused: dense per segment length)


def kernels(cfg: OmniConfig) -> Kernels:
    train, gpu = cfg.train, pick_device(cfg.train.device).type == "cuda"
    return Kernels(
        # auto: megatron-core's. The chunked loss frees the logits' memory but ran 18 ms slower a
        # 8k-token micro-batch on the H200 (benchmarks/NOTES.md): for where the loss sets the peak.
        chunked_loss=train.cross_entropy == "chunked",
        fusion=train.fusion == "compile" or (train.fusion == "auto" and gpu),
        encoder_attention=ENCODER_ATTENTION[train.encoder_attention],
    )


@lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile`` (once per function: every layer shares the compiled code;
    sizes that vary, the encoders' token counts, turn dynamic after the first recompile)."""
    return torch.compile(fn)


def fuse_megatron_rotary(on: bool) -> None:
    """megatron-core's unfused rotary (``rope_utils._apply_rotary_pos_emb_bshd``: cos, sin, two
    products and a sum per call, for q and for k) compiled in place (``on``), or as it was; its
    fused one needs TE. Process-wide, as megatron-core's ``jit_fuser`` is."""
    rope_utils._apply_rotary_pos_emb_bshd = compiled(_UNFUSED_ROTARY) if on else _UNFUSED_ROTARY
