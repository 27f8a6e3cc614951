"""Which kernels run (``train.cross_entropy``, ``train.fusion``, ``train.encoder_attention``; each
``auto``: torch's loss on one GPU tensor-parallel rank and megatron-core's elsewhere, fusion on a
GPU only, varlen attention), and the fusions megatron-core leaves to Transformer Engine.

Fusion ``compile`` turns each elementwise chain into one kernel each way: megatron-core's own
bias + dropout + residual and SwiGLU / biased-GELU fusions (its ``jit_fuser`` is
``torch.compile``); the activations it does not fuse (QuickGELU, tanh GELU) and both rotary paths
(megatron-core's unfused one in the LLM, our attention core's in the encoders) compiled here.
Fusion ``layers`` also compiles every transformer layer whole (LLM and encoders,
:func:`compile_layers`; ``auto`` on a GPU at tp = cp = 1: the encoders', and the LLM's where it is
dense), so that norms fuse with the residual adds and the q/k/v split and layout copies with the
rotary, as the plain-PyTorch baseline's compiled layers do, with each bias inside its GEMM
(:func:`fold_biases`). None of it changes a weight, only rounding: one bf16 rounding per fused
chain instead of per op.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
from megatron.core.models.common.embeddings import rope_utils
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.transformer_layer import TransformerLayer

from megaomni.config import OmniConfig
from megaomni.ops.linear import PlainLinear
from megaomni.platform.distributed import pick_device
from megaomni.platform.lazy_compile import lazy_compile

_UNFUSED_ROTARY = rope_utils._apply_rotary_pos_emb_bshd
# auto: torch's loss on one GPU tensor-parallel rank (vl_2b on an H200: +5.3% tokens/s over
# megatron-core's, 6.7 GiB more peak; benchmarks/NOTES.md), megatron-core's elsewhere. The chunked
# loss is for where the logits set the peak (slower: a third more output-layer GEMMs).
AUTO_LOSS = {True: "torch", False: "megatron"}
# auto: varlen. Dense per-length calls ran 1.4x varlen on fixed shapes but 0.55x end to end on
# vl_2b (cuDNN builds a plan for every new length; images of many sizes bring new ones every step).
ENCODER_ATTENTION = {"auto": AttnBackend.flash, "dense": AttnBackend.fused, "varlen": AttnBackend.flash}


@dataclass(frozen=True)
class Kernels:
    loss: str  # megatron | torch | chunked (megaomni.ops.cross_entropy)
    fusion: bool  # the elementwise chains
    whole_layers: frozenset  # of "llm", "encoders": their transformer layers through torch.compile
    encoder_attention: AttnBackend  # read by megaomni.ops.attention (fused: dense per segment length)


def kernels(cfg: OmniConfig) -> Kernels:
    train, gpu = cfg.train, pick_device(cfg.train.device).type == "cuda"
    # auto on a GPU: whole layers (+3.6% over the chains alone on vl_2b) without tensor or context
    # parallelism, which put collectives inside the layers; not an MoE LLM's, whose dispatcher
    # reads token counts on the host inside each layer (graph breaks), but its encoders' (omni_moe:
    # their 64 eager layers kept the GPU busy a third of the step; benchmarks/NOTES.md).
    if train.fusion == "layers":
        whole = {"llm", "encoders"}
    elif train.fusion == "auto" and gpu and cfg.parallel.tp == 1 and cfg.parallel.cp == 1:
        whole = {"encoders"} | (set() if cfg.model.llm.moe.enabled else {"llm"})
    else:
        whole = set()
    return Kernels(
        loss=train.cross_entropy if train.cross_entropy != "auto" else AUTO_LOSS[gpu and cfg.parallel.tp == 1],
        fusion=train.fusion in ("compile", "layers") or (train.fusion == "auto" and gpu),
        whole_layers=frozenset(whole),
        encoder_attention=ENCODER_ATTENTION[train.encoder_attention],
    )


@lru_cache(maxsize=None)
def compiled(fn: Callable) -> Callable:
    """``fn`` through ``torch.compile``, built on first use as megatron-core's fusions are
    (megaomni.platform.lazy_compile), once per function: every layer shares the compiled code;
    sizes that vary, the encoders' token counts, turn dynamic after the first recompile."""
    return lazy_compile(fn)


def fuse_megatron_rotary(on: bool) -> None:
    """megatron-core's unfused rotary (``rope_utils._apply_rotary_pos_emb_bshd``: cos, sin, two
    products and a sum per call, for q and for k) compiled in place (``on``), or as it was; its
    fused one needs TE. Process-wide, as megatron-core's ``jit_fuser`` is."""
    rope_utils._apply_rotary_pos_emb_bshd = compiled(_UNFUSED_ROTARY) if on else _UNFUSED_ROTARY


# torch.compile's backend for whole layers; the CPU tests take aot_eager (dynamo's capture and AOT
# autograd, as on a GPU, without inductor's C++ build of every graph).
LAYER_BACKEND = "inductor"


def compile_layers(model: torch.nn.Module) -> None:
    """Every megatron-core ``TransformerLayer`` in ``model`` through ``torch.compile`` (in place:
    ``nn.Module.compile`` keeps the parameters, their names and hooks). Dynamic shapes from the
    first call: token counts change every step. Layers of one structure share their graphs (dynamo
    lifts the parameters as inputs), so a stack compiles once, not once per layer."""
    # All layers share one code object, and dynamo keeps 8 graphs per code object by default: the
    # LLM's and each encoder's layers, the first layer's strided input, token counts either side
    # of 4096 (inductor's choice of kernels) and evaluation's no-grad passes take more than that
    # (past the limit the layers would quietly run uncompiled).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, TransformerLayer):
            fold_biases(module)
            module.compile(dynamic=True, backend=LAYER_BACKEND)


def fold_biases(layer: TransformerLayer) -> None:
    """Biases into their GEMMs (megaomni.ops.linear: ``fold_bias``) wherever the layer adds them
    plainly; not into the MLP's first linear where megatron-core's fused bias-activation kernels
    (SwiGLU, GELU) take the bias themselves."""
    mlp = getattr(layer, "mlp", None)
    keeps = getattr(mlp, "linear_fc1", None) if layer.config.bias_activation_fusion else None
    for module in layer.modules():
        if isinstance(module, PlainLinear) and module is not keeps:
            module.fold_bias = True
