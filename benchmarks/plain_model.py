"""The omni model of a recipe in plain PyTorch (no megatron-core): the baseline megaomni's speed is
measured against (benchmarks/plain_omni.py). Same shapes, parameters and matmuls as
megaomni.models.build, and the same parameter names and layouts: megaomni's state dict loads as it
is (tests/benchmarks/test_plain_omni.py checks the losses agree), and megaomni.models.freeze applies.

Every stack runs on packed rows ``[t, hidden]`` with ``cu_seqlens`` boundaries: images in the
ViT, samples in the LLM. Attention: ``varlen_attn`` (flash) on CUDA in bf16/fp16, SDPA with a
block mask elsewhere. Vision covers megaomni's rotary ViT (Qwen2-VL's, and megaomni's own
encoder); no audio, CLIP-style towers, windows or video time embeddings.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megaomni.config import LLMConfig, ModelConfig, VisionConfig
from megaomni.layers.rotary import rope_2d
from megaomni.media.images import patch_positions

ACTIVATIONS = {"swiglu": F.silu, "gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh"),
               "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


def check_supported(cfg: ModelConfig) -> None:
    """Refuse, naming the field, what this baseline does not implement."""
    if cfg.audio.enabled:
        raise ValueError("model.audio.enabled=true: the plain baseline has no audio encoder (set it false)")
    if cfg.llm.moe.enabled:
        raise ValueError("model.llm.moe: the plain baseline is dense only")
    v = cfg.vision
    if v.enabled and (v.class_token or v.position_embedding != "rope_2d" or v.window_size or v.pre_norm
                      or v.feature_layer):
        raise ValueError("model.vision: the plain baseline covers the rotary ViT only (no class token, learned "
                         "positions, windows, pre-norm or feature_layer)")


def flash(x: torch.Tensor) -> bool:
    """Whether attention over ``x`` takes ``varlen_attn`` (flash: CUDA, half precision)."""
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


def block_mask(cu_seqlens: torch.Tensor, total: int, causal: bool) -> torch.Tensor:
    """``[total, total]``, True where a row may attend: inside its own segment (host ``cu_seqlens``)."""
    ids = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), torch.diff(cu_seqlens.long()),
                                  output_size=total)
    mask = ids[:, None] == ids[None, :]
    return mask & torch.ones_like(mask).tril() if causal else mask


def attend(q, k, v, cu_seqlens: Optional[torch.Tensor], longest: int, mask: Optional[torch.Tensor],
           causal: bool) -> torch.Tensor:
    """``q [t, hq, d]``, ``k, v [t, hkv, d]`` -> ``[t, hq, d]``: ``varlen_attn`` over ``cu_seqlens``
    (on the device), or SDPA with ``mask`` (:func:`block_mask`) where that is given."""
    if k.shape[1] != q.shape[1]:  # GQA, as megaomni's varlen path does it
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if mask is None:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest,
                           window_size=(-1, 0) if causal else (-1, -1))
    out = F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), attn_mask=mask)
    return out[0].transpose(0, 1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (halves not interleaved), ``cos``/``sin`` ``[t, 1, d]``."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    return nn.LayerNorm(size, eps=eps) if kind == "layernorm" else nn.RMSNorm(size, eps=eps)


class Attention(nn.Module):
    """Fused QKV (GQA; rows per key/value group ``[its queries, k, v]``, megatron-core's layout),
    optional QK-norm, RoPE, packed attention, output projection."""

    def __init__(self, hidden: int, heads: int, groups: int, head_dim: int, *, eps: float, bias: bool,
                 qkv_bias: bool, qk_norm: bool, causal: bool):
        super().__init__()
        self.heads, self.groups, self.head_dim, self.causal = heads, groups, head_dim, causal
        self.linear_qkv = nn.Linear(hidden, (heads + 2 * groups) * head_dim, bias=bias or qkv_bias)
        self.q_layernorm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else None
        self.k_layernorm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else None
        self.linear_proj = nn.Linear(heads * head_dim, hidden, bias=bias)

    def forward(self, x, cos, sin, cu_seqlens: Optional[torch.Tensor], longest: int, mask: Optional[torch.Tensor]):
        t, per = x.shape[0], self.heads // self.groups
        qkv = self.linear_qkv(x).view(t, self.groups, per + 2, self.head_dim)
        q = qkv[:, :, :per].reshape(t, self.heads, self.head_dim)
        k, v = qkv[:, :, per], qkv[:, :, per + 1]
        if self.q_layernorm is not None:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        return self.linear_proj(attend(q, k, v, cu_seqlens, longest, mask, self.causal).reshape(t, -1))


class MLP(nn.Module):
    """SwiGLU (``linear_fc1`` rows ``[gate; up]``) or a plain activation between two linears."""

    def __init__(self, hidden: int, ffn: int, activation: str, bias: bool):
        super().__init__()
        self.gated, self.act = activation == "swiglu", ACTIVATIONS[activation]
        self.linear_fc1 = nn.Linear(hidden, ffn * (2 if self.gated else 1), bias=bias)
        self.linear_fc2 = nn.Linear(ffn, hidden, bias=bias)

    def forward(self, x):
        h = self.linear_fc1(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.linear_fc2(self.act(gate) * up)
        return self.linear_fc2(self.act(h))


class Layer(nn.Module):
    """Pre-norm transformer layer (megatron-core's parameter names, so state dicts load as they are)."""

    def __init__(self, hidden: int, heads: int, groups: int, head_dim: int, ffn: int, *, norm: str, eps: float,
                 activation: str, bias: bool, qkv_bias: bool, qk_norm: bool, causal: bool):
        super().__init__()
        self.causal = causal
        self.input_layernorm = make_norm(norm, hidden, eps)
        self.self_attention = Attention(hidden, heads, groups, head_dim, eps=eps, bias=bias, qkv_bias=qkv_bias,
                                        qk_norm=qk_norm, causal=causal)
        self.pre_mlp_layernorm = make_norm(norm, hidden, eps)
        self.mlp = MLP(hidden, ffn, activation, bias)

    def forward(self, x, cos, sin, cu_seqlens: Optional[torch.Tensor], longest: int, mask: Optional[torch.Tensor]):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, cu_seqlens, longest, mask)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Stack(nn.Module):
    """The layers and a final norm; ``compile`` wraps each layer in ``torch.compile``."""

    def __init__(self, layers: list[Layer], final_norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_layernorm = final_norm
        self.calls = list(self.layers)

    def compile_layers(self) -> None:
        # dynamic: packed lengths change every micro-batch; one graph for all of them.
        self.calls = [torch.compile(layer, dynamic=True) for layer in self.layers]

    def forward(self, x, cos, sin, cu_seqlens: torch.Tensor, longest: int):
        """``x [t, hidden]`` packed by host ``cu_seqlens``: boundaries on the device, or a mask,
        made once for all layers."""
        if flash(x):
            cu, mask = cu_seqlens.to(x.device, torch.int32, non_blocking=True), None
        else:
            cu, mask = None, block_mask(cu_seqlens, x.shape[0], self.layers[0].causal).to(x.device)
        for layer in self.calls:
            x = layer(x, cos, sin, cu, longest, mask)
        return self.final_layernorm(x)


class Merger(nn.Module):
    def __init__(self, size: int, hidden: int, out: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(size, hidden), nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class VisionTower(nn.Module):
    """Patch embedding, rotary ViT over each image's grid, final norm, merger (Qwen2-VL's): the
    ``merge^2`` adjacent patch features of a token concatenated, Linear-GELU-Linear."""

    def __init__(self, cfg: VisionConfig, llm_hidden: int):
        super().__init__()
        self.cfg, heads = cfg, cfg.num_attention_heads
        self.patch_embed = nn.Linear(cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2,
                                     cfg.hidden_size, bias=cfg.patch_bias)
        layer = partial(Layer, cfg.hidden_size, heads, heads, cfg.hidden_size // heads, cfg.ffn_hidden_size,
                        norm=cfg.norm, eps=cfg.norm_eps, activation=cfg.activation, bias=cfg.bias, qkv_bias=False,
                        qk_norm=False, causal=False)
        self.blocks = Stack([layer() for _ in range(cfg.num_layers)],
                            make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps))
        self.projector = Merger(cfg.hidden_size * cfg.merge_size ** 2, cfg.projector_hidden_size or llm_hidden,
                                llm_hidden)

    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """``patches [N, C*T*p*p]`` in megaomni's patch order, ``grids [n, 2]`` (host)
        -> ``[N / merge^2, llm_hidden]``."""
        cfg = self.cfg
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        positions = torch.cat([patch_positions(h, w, cfg.merge_size) for h, w in grids.tolist()])
        angles = rope_2d(positions, cfg.hidden_size // cfg.num_attention_heads, cfg.rotary_base)[:, 0]
        angles = angles.to(x.device, non_blocking=True)
        lengths = grids.prod(-1)
        cu = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        x = self.blocks(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), cu, int(lengths.max()))
        return self.projector(x.reshape(-1, x.shape[-1] * cfg.merge_size ** 2))


def llm_angles(cfg: LLMConfig, position_ids: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rotary angles ``[t, 1, head_dim]`` from ``position_ids`` ``[t]`` or ``[3, t]`` (M-RoPE: the
    frequency pairs of section i driven by axis i, megatron-core's MultimodalRotaryEmbedding)."""
    inv = 1.0 / (cfg.rotary_base ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                                  device=position_ids.device) / head_dim))
    axes = position_ids.float().view(-1, position_ids.shape[-1])  # [axes, t]
    freqs = axes[..., None] * inv  # [axes, t, d/2]
    if cfg.mrope_section and axes.shape[0] == 3:
        freqs = torch.cat([part[i % 3] for i, part in enumerate(freqs.split(cfg.mrope_section, dim=-1))], dim=-1)
    else:
        freqs = freqs[0]
    return torch.cat([freqs, freqs], dim=-1)[:, None, :]


class LLM(nn.Module):
    """Embedding, causal decoder (RMSNorm, GQA with RoPE, SwiGLU), final norm, output layer."""

    def __init__(self, cfg: LLMConfig, vocab: int):
        super().__init__()
        self.cfg, self.head_dim = cfg, cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads
        self.embedding = nn.Module()
        self.embedding.word_embeddings = nn.Embedding(vocab, cfg.hidden_size)
        layer = partial(Layer, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, self.head_dim,
                        cfg.ffn_hidden_size, norm="rmsnorm", eps=cfg.norm_eps, activation="swiglu", bias=False,
                        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, causal=True)
        self.decoder = Stack([layer() for _ in range(cfg.num_layers)], nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps))
        self.output_layer = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, vocab, bias=False)

    def forward(self, x, position_ids, labels, cu_seqlens, longest) -> torch.Tensor:
        """``x [t, hidden]`` embeddings, ``labels [t]`` -> per-token cross entropy ``[t]`` (fp32 logits)."""
        angles = llm_angles(self.cfg, position_ids, self.head_dim)
        x = self.decoder(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), cu_seqlens, longest)
        weight = self.embedding.word_embeddings.weight if self.output_layer is None else self.output_layer.weight
        return F.cross_entropy(F.linear(x, weight).float(), labels, reduction="none")


def merge_media(embeddings: torch.Tensor, tokens: torch.Tensor, pad_ids: tuple[int, ...],
                features: torch.Tensor) -> torch.Tensor:
    """``embeddings [t, h]`` with the k-th pad token's row replaced by ``features[k]`` (no host sync)."""
    at = torch.isin(tokens, torch.tensor(pad_ids, device=tokens.device))
    rows = (at.cumsum(0) - 1).clamp_(min=0)
    return torch.where(at[:, None], features.to(embeddings.dtype).index_select(0, rows), embeddings)


class PlainOmni(nn.Module):
    """Vision tower (when enabled) -> merge into the LLM's embeddings -> per-token loss."""

    def __init__(self, cfg: ModelConfig, vocab: int, vision_pads: tuple[int, ...] = ()):
        super().__init__()
        check_supported(cfg)
        self.cfg, self.vision_pads = cfg, vision_pads
        self.llm = LLM(cfg.llm, vocab)
        self.encoder_names = ["vision"] if cfg.vision.enabled else []  # what megaomni.models.freeze reads
        if cfg.vision.enabled:
            self.vision_encoder = VisionTower(cfg.vision, cfg.llm.hidden_size)
        for name, p in self.named_parameters():  # megatron-core's init: N(0, init_std), biases 0, norms 1
            if p.dim() > 1:
                nn.init.normal_(p, std=cfg.llm.init_std)

    def compile_layers(self) -> None:
        for stack in [self.llm.decoder] + ([self.vision_encoder.blocks] if self.encoder_names else []):
            stack.compile_layers()

    def forward(self, batch) -> torch.Tensor:
        """A megaomni ``Batch`` (on the device) -> per-token loss ``[b * s]`` (unmasked)."""
        b, s = batch.tokens.shape
        tokens = batch.tokens.reshape(-1)
        x = self.llm.embedding.word_embeddings(tokens)
        if "vision" in batch.media and self.encoder_names:
            media = batch.media["vision"]
            if "time" in media.info and bool((media.info["time"] != 0).any()):
                raise ValueError("video frames: the plain baseline has no temporal embedding")
            x = merge_media(x, tokens, self.vision_pads, self.vision_encoder(media.values, media.sizes))
        cu = batch.cu_seqlens
        if cu is None:  # padded rows: each row one causal sequence, as megaomni runs them
            cu = torch.arange(0, b * s + 1, s, dtype=torch.int32)
        positions = batch.position_ids.reshape(*batch.position_ids.shape[:-2], -1)
        return self.llm(x, positions, batch.labels.reshape(-1), cu, int(torch.diff(cu).max()))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

