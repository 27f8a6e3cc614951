"""The omni model of a recipe in plain PyTorch (no megatron-core): the baseline megaomni's speed is
measured against (benchmarks/plain_omni.py). Same shapes, parameters and matmuls as
megaomni.models.build; parameter names follow megaomni's parts (``llm.embedding.``,
``llm.decoder.``, ``llm.output_layer.``, ``vision_encoder.``, ``vision_encoder.projector.``) so
that megaomni.models.freeze applies unchanged.

Every stack runs on packed rows ``[t, hidden]`` with ``cu_seqlens`` boundaries: images in the
ViT, samples in the LLM. Attention: ``varlen_attn`` (flash) on CUDA in bf16/fp16, SDPA with a
block mask elsewhere. Vision covers megaomni's rotary ViT (Qwen2-VL's, and megaomni's own
encoder); no audio, CLIP-style towers, windows or video time embeddings.
"""

from __future__ import annotations

from functools import partial

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


def segments(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Each of ``total`` packed rows' segment index (host ``cu_seqlens`` -> ``[total]``)."""
    return torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), torch.diff(cu_seqlens.long()),
                                   output_size=total)


def attend(q, k, v, cu_seqlens: torch.Tensor, longest: int, causal: bool) -> torch.Tensor:
    """``q [t, hq, d]``, ``k, v [t, hkv, d]`` packed by ``cu_seqlens`` (host, int32) -> ``[t, hq, d]``."""
    if k.shape[1] != q.shape[1]:  # GQA, as megaomni's varlen path does it
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        cu = cu_seqlens.to(q.device, torch.int32, non_blocking=True)
        return varlen_attn(q, k, v, cu, cu, longest, longest, window_size=(-1, 0) if causal else (-1, -1))
    ids = segments(cu_seqlens, q.shape[0]).to(q.device)
    mask = ids[:, None] == ids[None, :]
    if causal:
        mask &= torch.ones_like(mask).tril()
    out = F.scaled_dot_product_attention(*(x.transpose(0, 1)[None] for x in (q, k, v)), attn_mask=mask)
    return out[0].transpose(0, 1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (halves not interleaved), ``cos``/``sin`` ``[t, 1, d]``."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    return nn.LayerNorm(size, eps=eps) if kind == "layernorm" else nn.RMSNorm(size, eps=eps)


class Layer(nn.Module):
    """Pre-norm transformer layer: fused QKV (GQA), RoPE, attention, output projection; MLP."""

    def __init__(self, hidden: int, heads: int, groups: int, head_dim: int, ffn: int, *, norm: str, eps: float,
                 activation: str, bias: bool, qkv_bias: bool, qk_norm: bool, causal: bool):
        super().__init__()
        self.heads, self.groups, self.head_dim, self.causal = heads, groups, head_dim, causal
        self.gated, self.act = activation == "swiglu", ACTIVATIONS[activation]
        self.input_layernorm = make_norm(norm, hidden, eps)
        self.linear_qkv = nn.Linear(hidden, (heads + 2 * groups) * head_dim, bias=bias or qkv_bias)
        self.q_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=eps) if qk_norm else None
        self.linear_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
        self.pre_mlp_layernorm = make_norm(norm, hidden, eps)
        self.linear_fc1 = nn.Linear(hidden, ffn * (2 if self.gated else 1), bias=bias)
        self.linear_fc2 = nn.Linear(ffn, hidden, bias=bias)

    def forward(self, x, cos, sin, cu_seqlens: torch.Tensor, longest: int):
        t, d = x.shape[0], self.head_dim
        q, k, v = self.linear_qkv(self.input_layernorm(x)).split(
            [self.heads * d, self.groups * d, self.groups * d], dim=-1)
        q, k, v = q.view(t, self.heads, d), k.view(t, self.groups, d), v.view(t, self.groups, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        x = x + self.linear_proj(attend(q, k, v, cu_seqlens, longest, self.causal).reshape(t, -1))
        h = self.linear_fc1(self.pre_mlp_layernorm(x))
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return x + self.linear_fc2(h)


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

    def forward(self, x, cos, sin, cu_seqlens, longest):
        for layer in self.calls:
            x = layer(x, cos, sin, cu_seqlens, longest)
        return self.final_layernorm(x)


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
        self.projector = nn.Sequential(nn.Linear(cfg.hidden_size * cfg.merge_size ** 2,
                                                 cfg.projector_hidden_size or llm_hidden),
                                       nn.GELU(), nn.Linear(cfg.projector_hidden_size or llm_hidden, llm_hidden))

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
        self.embedding = nn.Embedding(vocab, cfg.hidden_size)
        layer = partial(Layer, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, self.head_dim,
                        cfg.ffn_hidden_size, norm="rmsnorm", eps=cfg.norm_eps, activation="swiglu", bias=False,
                        qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm, causal=True)
        self.decoder = Stack([layer() for _ in range(cfg.num_layers)], nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps))
        self.output_layer = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, vocab, bias=False)

    def forward(self, x, position_ids, labels, cu_seqlens, longest) -> torch.Tensor:
        """``x [t, hidden]`` embeddings, ``labels [t]`` -> per-token cross entropy ``[t]`` (fp32 logits)."""
        angles = llm_angles(self.cfg, position_ids, self.head_dim)
        x = self.decoder(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype), cu_seqlens, longest)
        weight = self.embedding.weight if self.output_layer is None else self.output_layer.weight
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
        x = self.llm.embedding(tokens)
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

