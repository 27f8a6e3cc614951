"""Plain-torch reference forward passes for megaomni's model parts.

Deliberately independent of megatron-core and of megaomni.models: every function here takes the
tensors of a megatron model's ``state_dict()`` (a plain ``{name: tensor}`` mapping, looked up by
``prefix``) and recomputes the forward with explicit formulas, in whatever dtype the tensors are
(the tests use float64). Layout facts it relies on, checked against megatron-core 0.16:

- ``linear_qkv.weight`` rows are grouped per query group: for each of ``groups`` groups,
  ``[q of the heads/groups query heads (heads/groups * head_dim rows), k (head_dim), v (head_dim)]``
  (``SelfAttention.get_query_key_value_tensors``); query head ``j`` uses key/value group
  ``j // (heads/groups)``.
- ``linear_fc1.weight`` of the SwiGLU MLP is ``[gate; up]``: ``silu(x W_g^T) * (x W_u^T)``.
- rotary embeddings are non-interleaved rotate-half with the angle table repeated for both halves.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]


# ----------------------------------------------------------------------------- basic ops


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def inv_freq(dim: int, base: float) -> Tensor:
    """``base ** (-2i / dim)`` for ``i = 0 .. dim/2 - 1`` in float64."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    return torch.tensor(float(base), dtype=torch.float64) ** (-2.0 * i / dim)


def rope_angles_1d(positions: Sequence[int] | Tensor, head_dim: int, base: float) -> Tensor:
    """``[s, head_dim]``: ``pos * inv_freq``, the half-table repeated for rotate-half."""
    pos = torch.as_tensor(positions, dtype=torch.float64)
    half = pos[:, None] * inv_freq(head_dim, base)[None, :]
    return torch.cat([half, half], dim=-1)


def rope_angles_2d(rows: Sequence[int] | Tensor, cols: Sequence[int] | Tensor, head_dim: int,
                   base: float) -> Tensor:
    """``[s, head_dim]``: the first quarter of the angles rotate with the row, the second quarter
    with the column (frequencies of a ``head_dim/2`` table), and the half is repeated."""
    r = torch.as_tensor(rows, dtype=torch.float64)
    c = torch.as_tensor(cols, dtype=torch.float64)
    freqs = inv_freq(head_dim // 2, base)  # head_dim/4 frequencies
    half = torch.cat([r[:, None] * freqs[None, :], c[:, None] * freqs[None, :]], dim=-1)
    return torch.cat([half, half], dim=-1)


def rotate_half(x: Tensor) -> Tensor:
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """``x [s, heads, d]``, ``angles [s, d]``."""
    cos = torch.cos(angles).to(x.dtype)[:, None, :]
    sin = torch.sin(angles).to(x.dtype)[:, None, :]
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- attention


def causal_allowed(s: int) -> Tensor:
    return torch.ones(s, s, dtype=torch.bool).tril()


def block_allowed(lengths: Sequence[int], causal: bool = False) -> Tensor:
    """``[t, t]`` True inside each sequence's diagonal block (lower triangle of it when causal)."""
    total = sum(lengths)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for n in lengths:
        block = causal_allowed(n) if causal else torch.ones(n, n, dtype=torch.bool)
        allowed[start:start + n, start:start + n] = block
        start += n
    return allowed


def attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float | None = None
              ) -> Tensor:
    """Explicit ``softmax(Q K^T * scale + mask) V`` in float64.

    ``q [s, hq, d]``, ``k, v [s, hkv, d]`` (GQA: query head ``j`` reads key/value head
    ``j // (hq / hkv)``), ``allowed [s, s]`` boolean or None (everything allowed) ->
    ``[s, hq, d]`` in q's dtype.
    """
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    rep = hq // hkv
    k = torch.stack([k[:, j // rep] for j in range(hq)], dim=1)
    v = torch.stack([v[:, j // rep] for j in range(hq)], dim=1)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    if allowed is not None:
        scores = scores + torch.where(allowed, 0.0, -math.inf).to(scores.dtype)[None]
    probs = torch.exp(scores - scores.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    return torch.einsum("hqk,khd->qhd", probs, v).to(dtype)


# ----------------------------------------------------------------------------- transformer


def split_qkv(weight: Tensor, x: Tensor, heads: int, groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """``x [s, hidden]`` through the fused ``linear_qkv`` weight -> q ``[s, heads, d]``,
    k, v ``[s, groups, d]`` (megatron's per-group ``[q..., k, v]`` row layout)."""
    per_group = heads // groups
    d = weight.shape[0] // (groups * (per_group + 2))
    q_rows, k_rows, v_rows = [], [], []
    for g in range(groups):
        base = g * (per_group + 2) * d
        q_rows.append(weight[base:base + per_group * d])
        k_rows.append(weight[base + per_group * d:base + (per_group + 1) * d])
        v_rows.append(weight[base + (per_group + 1) * d:base + (per_group + 2) * d])
    q = x @ torch.cat(q_rows).T
    k = x @ torch.cat(k_rows).T
    v = x @ torch.cat(v_rows).T
    s = x.shape[0]
    return q.view(s, heads, d), k.view(s, groups, d), v.view(s, groups, d)


def transformer_layer(sd: StateDict, prefix: str, x: Tensor, *, heads: int, groups: int,
                      eps: float, angles: Tensor, allowed: Tensor | None) -> Tensor:
    """Pre-norm layer on ``x [s, hidden]``: RMSNorm -> qkv -> rope -> attention -> proj ->
    residual; RMSNorm -> SwiGLU -> fc2 -> residual."""
    h = rms_norm(x, sd[prefix + "input_layernorm.weight"], eps)
    q, k, v = split_qkv(sd[prefix + "self_attention.linear_qkv.weight"], h, heads, groups)
    q, k = apply_rope(q, angles), apply_rope(k, angles)
    a = attention(q, k, v, allowed).reshape(x.shape[0], -1)
    x = x + a @ sd[prefix + "self_attention.linear_proj.weight"].T
    h = rms_norm(x, sd[prefix + "pre_mlp_layernorm.weight"], eps)
    gate, up = (h @ sd[prefix + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
    return x + (silu(gate) * up) @ sd[prefix + "mlp.linear_fc2.weight"].T


def transformer_stack(sd: StateDict, prefix: str, x: Tensor, *, num_layers: int, heads: int,
                      groups: int, eps: float, angles: Tensor, allowed: Tensor | None,
                      final_norm: str) -> Tensor:
    for i in range(num_layers):
        x = transformer_layer(sd, f"{prefix}layers.{i}.", x, heads=heads, groups=groups, eps=eps,
                              angles=angles, allowed=allowed)
    return rms_norm(x, sd[prefix + final_norm], eps)


def projector(sd: StateDict, prefix: str, x: Tensor, merge: int) -> Tensor:
    """Concatenate ``merge`` consecutive rows, then Linear -> GELU -> Linear."""
    merged = torch.stack([torch.cat(list(x[i:i + merge])) for i in range(0, x.shape[0], merge)])
    h = gelu(merged @ sd[prefix + "fc1.weight"].T + sd[prefix + "fc1.bias"])
    return h @ sd[prefix + "fc2.weight"].T + sd[prefix + "fc2.bias"]


# ----------------------------------------------------------------------------- encoders


def image_patch_positions(grid_h: int, grid_w: int, merge: int) -> list[tuple[int, int]]:
    """(row, col) of each patch in packing order: merged tokens row-major, and inside each token
    its ``merge x merge`` patches row-major."""
    out = []
    for tr in range(grid_h // merge):
        for tc in range(grid_w // merge):
            for i in range(merge):
                for j in range(merge):
                    out.append((tr * merge + i, tc * merge + j))
    return out


def temporal_embedding(t: int, dim: int, base: float = 10000.0) -> Tensor:
    """``[dim]`` float64: ``(PE(t) - PE(0)) / sqrt(dim)``, PE the Transformer's sinusoid:
    ``sin(t w_i)`` for ``i < dim/2``, then ``cos(t w_i)``, with ``w_i = base^(-2i/dim)``."""
    w = inv_freq(dim, base)
    return torch.cat([torch.sin(t * w), torch.cos(t * w) - 1.0]) / math.sqrt(dim)


def vision_encoder(sd: StateDict, prefix: str, patches: Tensor, grids: Sequence[Sequence[int]], *,
                   num_layers: int, heads: int, eps: float, merge: int, base: float,
                   times: Sequence[int] | None = None) -> Tensor:
    """Each image on its own (full bidirectional attention inside it), outputs concatenated.
    ``times``: each image's frame index in its video, its :func:`temporal_embedding` added to
    every patch embedding of the image (None: no embedding added)."""
    hidden = sd[prefix + "patch_embed.weight"].shape[0]
    head_dim = hidden // heads
    outs, start = [], 0
    for i, (gh, gw) in enumerate(grids):
        n = gh * gw
        x = patches[start:start + n] @ sd[prefix + "patch_embed.weight"].T
        if times is not None:
            x = x + temporal_embedding(int(times[i]), hidden).to(x.dtype)[None, :]
        start += n
        pos = image_patch_positions(gh, gw, merge)
        angles = rope_angles_2d([p[0] for p in pos], [p[1] for p in pos], head_dim, base)
        x = transformer_stack(sd, prefix + "blocks.", x, num_layers=num_layers, heads=heads,
                              groups=heads, eps=eps, angles=angles, allowed=None,
                              final_norm="final_layernorm.weight")
        outs.append(projector(sd, prefix + "projector.", x, merge * merge))
    assert start == patches.shape[0]
    return torch.cat(outs)


def audio_stem(sd: StateDict, prefix: str, clip: Tensor) -> Tensor:
    """One clip ``[frames, mels]`` -> ``[ceil(frames/2), hidden]``: conv(k3,p1) -> GELU ->
    conv(k3,s2,p1) -> GELU, each convolution zero-padding this clip only."""
    x = clip.T[None]  # [1, mels, T]
    x = gelu(F.conv1d(x, sd[prefix + "conv1.weight"], sd[prefix + "conv1.bias"], padding=1))
    x = gelu(F.conv1d(x, sd[prefix + "conv2.weight"], sd[prefix + "conv2.bias"], stride=2, padding=1))
    return x[0].T


def audio_encoder(sd: StateDict, prefix: str, features: Tensor, lengths: Sequence[int], *,
                  num_layers: int, heads: int, eps: float, merge: int, base: float) -> Tensor:
    """Each clip on its own: stem, zero-pad to a multiple of ``merge``, positions from 0, full
    attention inside the clip, final norm, projector; outputs concatenated."""
    hidden = sd[prefix + "conv1.weight"].shape[0]
    head_dim = hidden // heads
    outs, start = [], 0
    for n in lengths:
        x = audio_stem(sd, prefix, features[start:start + n])
        start += n
        padded = -(-x.shape[0] // merge) * merge
        x = torch.cat([x, x.new_zeros(padded - x.shape[0], hidden)])
        angles = rope_angles_1d(range(padded), head_dim, base)
        x = transformer_stack(sd, prefix + "blocks.", x, num_layers=num_layers, heads=heads,
                              groups=heads, eps=eps, angles=angles, allowed=None,
                              final_norm="final_layernorm.weight")
        outs.append(projector(sd, prefix + "projector.", x, merge))
    assert start == features.shape[0]
    return torch.cat(outs)


# ----------------------------------------------------------------------------- LLM


def merge_features(embeddings: Tensor, tokens: Tensor, pad_id: int, features: Tensor) -> Tensor:
    """``embeddings [b, s, h]``: the k-th ``pad_id`` token (sample by sample, left to right) gets
    ``features[k]``."""
    out = embeddings.clone()
    k = 0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            if int(tokens[b, t]) == pad_id:
                out[b, t] = features[k]
                k += 1
    assert k == features.shape[0], (k, features.shape)
    return out


def llm_token_loss(sd: StateDict, prefix: str, embeddings: Tensor, labels: Tensor, *,
                   num_layers: int, heads: int, groups: int, eps: float, base: float) -> Tensor:
    """``embeddings [b, s, h]`` (media already merged) -> per-token cross entropy ``[b, s]``."""
    b, s, hidden = embeddings.shape
    angles = rope_angles_1d(range(s), hidden // heads, base)
    losses = []
    for i in range(b):
        x = transformer_stack(sd, prefix + "decoder.", embeddings[i], num_layers=num_layers,
                              heads=heads, groups=groups, eps=eps, angles=angles,
                              allowed=causal_allowed(s), final_norm="final_layernorm.weight")
        logits = x @ sd[prefix + "output_layer.weight"].T  # [s, vocab]
        lse = torch.logsumexp(logits, dim=-1)
        losses.append(lse - logits.gather(-1, labels[i][:, None].long())[:, 0])
    return torch.stack(losses)
