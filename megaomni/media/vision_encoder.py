"""Vision encoder: ViT over variable-resolution images, 2D rotary positions, patch merging; or,
by configuration, a CLIP / SigLIP tower over fixed-size images (learned positions, a class
token, a norm before the blocks, features from an inner layer).

Images of different sizes are packed into one sequence; attention stays within each image
(bidirectional). Knows nothing of parallelism: the transformer stack is megatron-core's.

A video's frames are images with a temporal index ``t``. It enters as a fixed sinusoidal
embedding of ``t`` added to every patch embedding of the frame, not as a third rotary axis:
attention stays inside one frame, where every patch has the same ``t``, and rotary embeddings
carry only differences of position, so a temporal rotary axis would change nothing. The
embedding is the Transformer's sinusoid of ``t`` minus that of ``t = 0``, divided by
``sqrt(hidden)``: no parameters (checkpoints load unchanged), exactly zero for a still image
(``t = 0`` gives the outputs of an image encoder without it), and a norm of at most ``sqrt(2)``
whatever the width: next to a patch embedding it is an offset the encoder can read, not one
that buries what the frame shows.

Windowed attention (Qwen2.5-VL's, ``model.vision.window_size``): megaomni.media.vision_windows.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megaomni.config import VisionConfig
from megaomni.layers.projector import MLPProjector
from megaomni.layers.rotary import rope_2d, sinusoid_from_zero
from megaomni.layers.specs import NORM_MODULES, encoder_layer_spec
from megaomni.media.images import patch_positions
from megaomni.media.modality import MediaBatch
from megaomni.media.vision_windows import Windows
from megaomni.ops.attention import segment_params
from megaomni.platform.transfer import to_device

TEMPORAL_BASE = 10000.0  # the Transformer's: frame indices stay far below its longest period


def temporal_embedding(times: torch.Tensor, hidden: int) -> torch.Tensor:
    """Frame indices ``[n]`` -> ``[n, hidden]``, zero at ``t = 0`` (see the module docstring)."""
    return sinusoid_from_zero(times, hidden, TEMPORAL_BASE) / math.sqrt(hidden)


class VisionEncoder(MegatronModule):
    """A :class:`MediaBatch` of images -> ``[features / merge^2, llm_hidden]``: ``values`` the
    patches ``[N, C*T*p*p]`` (``T``: ``temporal_patch_size``; each patch channel-major, ``(C, T, p,
    p)`` flattened), ``sizes`` the grids ``[n_images, 2]``, ``info["time"]`` each image's frame
    index in its video (absent: all 0). The features: one per patch, and a kept class token's row
    first in each image."""

    def __init__(self, cfg: VisionConfig, config: TransformerConfig, llm_hidden: int, pg_collection=None):
        super().__init__(config=config)
        self.cfg = cfg
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        # A linear map of each patch vector: the same as a convolution with the patch's size and stride.
        self.patch_embed = nn.Linear(cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2,
                                     cfg.hidden_size, bias=cfg.patch_bias)
        if cfg.class_token:
            self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
            config.init_method(self.class_embedding)
        if cfg.position_embedding == "learned":
            self.position_embedding = nn.Embedding((cfg.image_size // cfg.patch_size) ** 2 + cfg.class_token,
                                                   cfg.hidden_size)
            config.init_method(self.position_embedding.weight)
        if cfg.pre_norm:
            self.pre_norm = NORM_MODULES[cfg.norm](config, cfg.hidden_size, cfg.norm_eps)
        used, spec = cfg.layers_used(), encoder_layer_spec(cfg.norm)
        self.blocks = TransformerBlock(config if used == cfg.num_layers else replace(config, num_layers=used), spec,
                                       post_layer_norm=cfg.feature_layer == 0, pg_collection=pg_collection)
        if cfg.feature_layer:
            # Never run: the layers after the feature layer and the final norm, which a checkpoint of
            # the whole tower holds; kept (frozen) so that exporting it gives it back whole.
            self.unused = TransformerBlock(replace(config, num_layers=cfg.num_layers - used), spec,
                                           post_layer_norm=True, pg_collection=pg_collection)
            self.unused.requires_grad_(False)
        self.projector = MLPProjector(cfg.hidden_size, llm_hidden, merge=cfg.merge_size**2,
                                      hidden=cfg.projector_hidden_size)

    def forward(self, media: MediaBatch) -> torch.Tensor:
        # grids, times: host tensors (MediaBatch.to leaves shape metadata there), read without a sync.
        cfg, (patches, grids, times) = self.cfg, (media.values, media.sizes, media.info.get("time"))
        device = patches.device
        lengths = grids.prod(-1)  # patches per image
        hidden = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        if times is not None and cfg.temporal_embedding:
            per_image = temporal_embedding(to_device(times, device), cfg.hidden_size).to(hidden.dtype)
            hidden = hidden + per_image.repeat_interleave(to_device(lengths, device), dim=0,
                                                          output_size=hidden.shape[0])
        angles = None
        if cfg.class_token:
            first = self.class_embedding.to(hidden.dtype)[None]
            hidden = torch.cat([t for part in hidden.split(lengths.tolist()) for t in (first, part)])
        if cfg.position_embedding == "learned":
            hidden = hidden + self.position_embedding(to_device(self._table_rows(grids), device))
        else:
            positions = torch.cat([patch_positions(h, w, cfg.merge_size) for h, w in grids.tolist()])
            angles = rope_2d(to_device(positions, device), self.head_dim, cfg.rotary_base)
        if cfg.pre_norm:
            hidden = self.pre_norm(hidden)
        params = segment_params(lengths + int(cfg.class_token), device, angles, hidden.dtype)
        windows = self._windows(grids, device)
        if windows is not None:
            hidden, params = windows.gather(hidden), windows.segment(params, cfg.full_attention_layers)
        hidden = self.blocks(
            hidden_states=hidden[:, None, :],
            attention_mask=None,
            rotary_pos_emb=None,  # applied by our attention core from tables made once (segment_params)
            packed_seq_params=params,
        )[:, 0, :]
        if windows is not None:
            hidden = windows.scatter(hidden)
        if cfg.class_token and not cfg.keep_class_token:  # patch p of image i is row p + i + 1
            rows = torch.arange(patches.shape[0]) + torch.arange(len(lengths)).repeat_interleave(lengths) + 1
            hidden = hidden.index_select(0, to_device(rows, device))
        return self.projector(hidden)

    def _windows(self, grids: torch.Tensor, device: torch.device) -> Optional[Windows]:
        """Windowed attention's order of the images' patches (model.vision.window_size), or None."""
        if not self.cfg.window_size:
            return None
        return Windows(grids, self.cfg.merge_size, self.cfg.window_size // (self.cfg.patch_size * self.cfg.merge_size),
                       device)

    def _table_rows(self, grids: torch.Tensor) -> torch.Tensor:
        """The learned table's row of every encoder row: raster order, after the class token's."""
        cfg, side = self.cfg, self.cfg.image_size // self.cfg.patch_size
        if (grids != side).any():
            h, w = grids[(grids != side).any(-1)][0].tolist()
            raise ValueError(f"an image of {h}x{w} patches: model.vision.position_embedding=learned holds "
                             f"{side}x{side} (model.vision.image_size={cfg.image_size})")
        rows, cols = patch_positions(side, side, cfg.merge_size).unbind(-1)
        table = rows * side + cols
        if cfg.class_token:
            table = torch.cat([table.new_zeros(1), table + 1])
        return table.repeat(len(grids))
