"""A modality defined outside the library: depth maps, to prove that adding one takes one module
and a config section (megaomni.media's seam), and no edit of megaomni itself.

A depth map is a 2D float array stored as ``KEY.npy`` (placeholder ``<depth>``). It is cut into
``patch x patch`` cells (one encoder row each, raster order); every ``merge`` rows become one
LLM token. The encoder is a small bidirectional megatron-core transformer with 1D rotary
positions, attention inside each map.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from torch import nn

from megaomni.checks import require_heads, require_positive
from megaomni.errors import BadSample
from megaomni.layers.projector import MLPProjector
from megaomni.layers.rotary import rope_1d
from megaomni.layers.specs import encoder_layer_spec
from megaomni.media.modality import EncoderFlops, MediaBatch, MediaItem, Modality, Source
from megaomni.ops.attention import segment_params
from megaomni.platform.transfer import to_device

DEPTH = "<depth>"


@dataclass
class DepthConfig:
    enabled: bool = True
    num_layers: int = 1
    hidden_size: int = 32
    num_attention_heads: int = 2
    ffn_hidden_size: int = 64
    patch: int = 4  # a map is cut into patch x patch cells
    merge: int = 2  # encoder rows per LLM token
    rotary_base: float = 1000.0
    norm_eps: float = 1e-6
    norm: str = "rmsnorm"
    activation: str = "swiglu"
    bias: bool = False


class DepthEncoder(MegatronModule):
    """Cells ``[N, patch^2]`` of maps of ``sizes[i, 0]`` cells -> ``[sum ceil(n/merge), llm_hidden]``."""

    def __init__(self, cfg: DepthConfig, config, llm_hidden: int, pg_collection=None):
        super().__init__(config=config)
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch * cfg.patch, cfg.hidden_size)
        self.blocks = TransformerBlock(config, encoder_layer_spec(), post_layer_norm=True,
                                       pg_collection=pg_collection)
        self.projector = MLPProjector(cfg.hidden_size, llm_hidden, merge=cfg.merge)

    def forward(self, media: MediaBatch) -> torch.Tensor:
        lengths = media.sizes[:, 0].tolist()  # host metadata: no sync
        padded = [-(-n // self.cfg.merge) * self.cfg.merge for n in lengths]  # merging never mixes maps
        hidden = self.embed(media.values.to(self.embed.weight.dtype))
        hidden = torch.cat([F.pad(p, (0, 0, 0, m - n)) for p, n, m in zip(hidden.split(lengths), lengths, padded)])
        positions = to_device(torch.cat([torch.arange(m) for m in padded]), hidden.device)
        head_dim = self.cfg.hidden_size // self.cfg.num_attention_heads
        hidden = self.blocks(hidden_states=hidden[:, None, :], attention_mask=None, rotary_pos_emb=None,
                             packed_seq_params=segment_params(torch.tensor(padded), hidden.device,
                                                              rope_1d(positions, head_dim, self.cfg.rotary_base),
                                                              hidden.dtype))
        return self.projector(hidden[:, 0, :])


def _header_shape(data: bytes) -> tuple[int, ...]:
    try:
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return reader(f)[0]
    except ValueError as e:
        raise BadSample("bad_depth", f"not a .npy array ({e})") from e


class Depth(Modality):
    name = "depth"
    pad = "<|depth_pad|>"
    section = DepthConfig
    sources = (Source(DEPTH, ("npy",), "depth map"),)
    encoder = DepthEncoder

    def _item(self, shape: tuple[int, ...], cfg, values=None) -> MediaItem:
        p = cfg.model.depth.patch
        if len(shape) != 2 or shape[0] % p or shape[1] % p or not shape[0] * shape[1]:
            raise BadSample("bad_depth", f"a {shape} depth map is not 2D in whole {p}x{p} cells")
        rows = shape[0] // p * (shape[1] // p)
        return MediaItem((rows,), rows, -(-rows // cfg.model.depth.merge), {}, values)

    def decode(self, source, members, cfg):
        p, items = cfg.model.depth.patch, []
        for _, data in members:
            try:
                depth = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
            except ValueError as e:
                raise BadSample("bad_depth", f"not a .npy array ({e})") from e
            item = self._item(depth.shape, cfg)
            h, w = depth.shape
            cells = torch.from_numpy(depth).view(h // p, p, w // p, p).permute(0, 2, 1, 3).reshape(-1, p * p)
            item.values = cells.contiguous()
            items.append([item])
        return items

    def measure(self, source, members, cfg):
        return [[self._item(_header_shape(data), cfg)] for _, data in members]

    def flops(self, section, llm_hidden):
        return EncoderFlops.transformer(section, llm_hidden)

    def check(self, cfg):
        depth = cfg.model.depth
        require_positive("model.depth", depth, ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                                                "patch", "merge"))
        require_heads("model.depth", depth.hidden_size, depth.num_attention_heads, 2)


DEPTH_MODALITY = Depth()
