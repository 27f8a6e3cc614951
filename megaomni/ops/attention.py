"""Attention core on ``torch.nn.functional.scaled_dot_product_attention``.

A drop-in for megatron-core's ``DotProductAttention`` (same constructor and ``forward``), used by
the local (no Transformer Engine) layer specs. megatron-core's own core materialises the full
score matrix in fp32 (4x slower and out of memory at 4k tokens on an 80 GB GPU, see
shared/notes/gpu-anchors.md); SDPA picks flash / cuDNN / memory-efficient kernels.

Sequence boundaries: when ``packed_seq_params`` carries ``cu_seqlens_q``, tokens attend only
within their own sequence. Two layouts reach here:

- ``qkv_format="thd"`` (packed LLM sequences): tensors are ``[t, heads, dim]``;
- ``qkv_format="sbhd"`` with ``cu_seqlens`` (encoders over several images/clips): tensors are
  ``[t, 1, heads, dim]``. megatron-core applies rotary embeddings position by position in this
  layout, which is what the encoders' 2D (image) positions need, and leaves the boundaries to us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnBackend, AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from megaomni.ops.context_parallel import causal_cp_mask, gather_keys_values, sequence_ids
from megaomni.ops.kernels import compiled
from megaomni.platform.transfer import to_device


def packed_params(cu_seqlens: torch.Tensor, device: Optional[torch.device] = None) -> PackedSeqParams:
    """Boundaries of variable-length inputs (images, clips, the samples of a packed LLM row)
    along one ``sbhd`` sequence, from cumulative lengths (int32, starting at 0). Give them on
    the host, with the ``device`` the kernels run on: the longest is read there (on a GPU tensor
    that read would wait for the GPU) and the params carry a copy on ``device``."""
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if device is not None:
        cu_seqlens = to_device(cu_seqlens, device)
    return PackedSeqParams(qkv_format="sbhd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


@dataclass
class SegmentParams(PackedSeqParams):
    """:class:`PackedSeqParams` of bidirectional segments (images, clips, windows) that also carry
    the segments' ``lengths`` on the host: what :func:`segment_attention` groups by, with no read
    of the GPU's copy."""

    lengths: tuple[int, ...] = ()


@dataclass
class RotaryPackedSeqParams(SegmentParams):
    """:class:`PackedSeqParams` that also carry every position's rotary ``cos`` and ``sin``
    (``[t, 1, 1, d]``, in the activations' dtype), made once per encoder call; megatron-core
    would recompute them in every layer, for q and for k (host time, where the encoders are
    host-bound). :class:`SDPAttention` applies them as megatron-core's unfused rotary does."""

    rotary_cos: Optional[torch.Tensor] = None
    rotary_sin: Optional[torch.Tensor] = None
    # Windowed attention (megaomni.media.vision_windows): megatron-core gives every layer the same
    # params, so the layers numbered in full_layers (0-based) take their boundaries from ``full``
    # (whole images) instead of these (windows).
    full: Optional[PackedSeqParams] = None
    full_layers: tuple[int, ...] = ()

    def for_layer(self, index: int) -> PackedSeqParams:
        """The boundaries layer ``index`` (0-based) attends within."""
        return self.full if index in self.full_layers else self


def segment_params(lengths: torch.Tensor, device: Optional[torch.device] = None,
                   angles: Optional[torch.Tensor] = None, dtype: Optional[torch.dtype] = None) -> PackedSeqParams:
    """:class:`SegmentParams` from the inputs' lengths (on the host); with rotary ``angles``
    (``[t, 1, 1, d]``) :class:`RotaryPackedSeqParams` holding their cos and sin in ``dtype``."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)
    params = {f.name: getattr(packed_params(cu, device), f.name) for f in fields(PackedSeqParams)}
    params["lengths"] = tuple(lengths.tolist())
    if angles is None:
        return SegmentParams(**params)
    return RotaryPackedSeqParams(**params, rotary_cos=torch.cos(angles).to(dtype),
                                 rotary_sin=torch.sin(angles).to(dtype))


def _rotate(t: torch.Tensor, params: RotaryPackedSeqParams) -> torch.Tensor:
    """megatron-core's unfused rotary (``t * cos + rotate_half(t) * sin``, halves not interleaved)."""
    first, second = torch.chunk(t, 2, dim=-1)
    return t * params.rotary_cos + torch.cat((-second, first), dim=-1) * params.rotary_sin


def block_mask(cu_seqlens: torch.Tensor, total: int, causal: bool) -> torch.Tensor:
    """Boolean ``[total, total]`` mask, True where attention is allowed."""
    ids = sequence_ids(cu_seqlens, total)
    allowed = ids[:, None] == ids[None, :]
    if causal:
        allowed &= torch.ones(total, total, dtype=torch.bool, device=ids.device).tril()
    return allowed


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    cu_seqlens: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """``q [b, hq, sq, d]``, ``k/v [b, hkv, sk, d]`` -> ``[b, hq, sq, d]``; GQA by head groups.

    With ``cu_seqlens`` (b must be 1) attention stays inside each sequence; an explicit boolean
    ``mask [sq, sk]`` (True: may attend) replaces ``causal``.
    """
    if mask is not None:
        causal = False
    elif cu_seqlens is not None:
        mask = block_mask(cu_seqlens, q.shape[2], causal)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal,
                                          scale=scale, enable_gqa=_grouped(q, k))


def _grouped(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether q and k (heads in dimension 1) have different head counts (GQA), as a Python bool: in a
    compiled layer the shapes are symbolic, and SDPA takes no symbolic flag (the branch makes
    dynamo decide it, guarded)."""
    return True if q.shape[1] != k.shape[1] else False


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, longest: int,
                     *, causal: bool, scale: Optional[float]) -> Optional[torch.Tensor]:
    """``[t, h, d]`` packed sequences through torch's flash varlen kernel, or None where it does
    not apply (CPU, fp32, or a torch without it): then :func:`sdpa_attention` with a block mask,
    which is exact but materialises a ``[t, t]`` mask (shared/notes/gpu-anchors.md: 1.06 ms vs
    1.9 ms for 8k packed tokens)."""
    if not q.is_cuda or q.dtype not in (torch.bfloat16, torch.float16):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    if k.shape[1] != q.shape[1]:  # GQA: the kernel's own grouping is newer than torch 2.11
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale,
                       window_size=(-1, 0) if causal else (-1, -1))


def _dense_backends() -> list:
    """SDPA's kernels for :func:`segment_attention`, cuDNN's first (at head dim 80 it runs 1.6x
    flash's, benchmarks/results/attention_bench_nvidia-h200.json); the rest where it declines."""
    from torch.nn.attention import SDPBackend
    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: tuple[int, ...],
                      scale: Optional[float]) -> torch.Tensor:
    """Bidirectional attention inside each segment of ``[t, h, d]`` packed q/k/v (``lengths`` on
    the host): the segments of one length stacked into one dense SDPA call, no mask. Images of
    one size are common (fixed resizes, video frames, windows); a size alone is a batch of one."""
    from torch.nn.attention import sdpa_kernel

    starts = list(accumulate((0, *lengths[:-1])))
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n:
            groups.setdefault(n, []).append(i)
    pieces: list = [None] * len(lengths)
    for n, members in groups.items():
        def stacked(x):  # [m, h, n, d]
            rows = [x[starts[i]:starts[i] + n] for i in members]
            return (torch.stack(rows) if len(rows) > 1 else rows[0][None]).transpose(1, 2)

        with sdpa_kernel(_dense_backends(), set_priority=True):
            out = F.scaled_dot_product_attention(stacked(q), stacked(k), stacked(v), scale=scale,
                                                 enable_gqa=_grouped(q, k))
        for j, i in enumerate(members):
            pieces[i] = out[j].transpose(0, 1)
    return torch.cat([p for p in pieces if p is not None])


class SDPAttention(MegatronModule):
    """megatron-core core-attention module backed by :func:`sdpa_attention`."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        self.cp_group = None
        if config.context_parallel_size > 1:
            self.cp_group = pg_collection.cp if pg_collection is not None else ps.get_context_parallel_group()
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.layer_index = layer_number - 1  # megatron-core's layer numbers start at 1
        # train.fusion (megaomni.ops.kernels) sets bias_dropout_fusion; the rotary is fused with it.
        self.rotate = compiled(_rotate) if config.bias_dropout_fusion else _rotate
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        if attention_bias is not None:
            raise ValueError("SDPAttention does not take an attention bias")
        if attention_mask is not None:
            raise ValueError("SDPAttention expresses masks by attn_mask_type and cu_seqlens only")
        if isinstance(packed_seq_params, RotaryPackedSeqParams):
            query, key = self.rotate(query, packed_seq_params), self.rotate(key, packed_seq_params)
            # Only windowed encoders read the layer's index: a compiled layer (train.fusion=layers)
            # is specialised on every integer it reads, one graph per layer.
            if packed_seq_params.full_layers:
                packed_seq_params = packed_seq_params.for_layer(self.layer_index)
        mask_type = attn_mask_type or self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        cu_seqlens = packed_seq_params.cu_seqlens_q if packed_seq_params is not None else None
        thd = packed_seq_params is not None and packed_seq_params.qkv_format == "thd"
        mask = None
        if self.cp_group is not None:
            if thd or not causal:
                raise ValueError("context parallelism in SDPAttention covers causal sbhd sequences")
            # cu_seqlens describe the whole (packed) sequence, before the CP split.
            mask = causal_cp_mask(query.shape[0], self.cp_group, query.device, cu_seqlens)
            key, value = gather_keys_values(key, value, self.cp_group)
        dropout_p = self.dropout_p if self.training else 0.0
        if cu_seqlens is not None and mask is None and dropout_p == 0 and (thd or query.shape[1] == 1):
            flat = [x if thd else x[:, 0] for x in (query, key, value)]  # [t, h, d]
            # train.encoder_attention=dense (megaomni.ops.kernels) asks for attention_backend fused.
            dense = self.config.attention_backend == AttnBackend.fused
            if isinstance(packed_seq_params, SegmentParams) and not causal and dense:
                out = segment_attention(*flat, packed_seq_params.lengths, self.softmax_scale)
                return out.reshape(out.shape[0], 1, -1)
            out = varlen_attention(*flat, cu_seqlens, packed_seq_params.max_seqlen_q, causal=causal,
                                   scale=self.softmax_scale)
            if out is not None:
                return out.reshape(out.shape[0], -1) if thd else out.reshape(out.shape[0], 1, -1)
        if thd:  # [t, h, d] -> [1, h, t, d]
            q, k, v = (x.unsqueeze(0).transpose(1, 2) for x in (query, key, value))
        else:  # [s, b, h, d] -> [b, h, s, d]
            q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        if dropout_p > 0 and not self.config.sequence_parallel:
            # Same RNG discipline as megatron-core's core attention: heads differ per TP rank.
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = sdpa_attention(q, k, v, causal=causal, cu_seqlens=cu_seqlens, mask=mask,
                                     dropout_p=dropout_p, scale=self.softmax_scale)
        else:
            out = sdpa_attention(q, k, v, causal=causal, cu_seqlens=cu_seqlens, mask=mask,
                                 dropout_p=dropout_p, scale=self.softmax_scale)
        if thd:  # [1, h, t, d] -> [t, h*d]
            return out.squeeze(0).transpose(0, 1).reshape(out.shape[2], -1)
        b, h, s, d = out.shape  # -> [s, b, h*d]
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)
