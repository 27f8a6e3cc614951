"""Vision encoder: ViT over variable-resolution images, 2D rotary positions, patch merging.

Images of different sizes are packed into one sequence; attention stays within each image
(bidirectional). Knows nothing of parallelism: the transformer stack is megatron-core's.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megaomni.config import VisionConfig
from megaomni.models.media_layout import patch_positions
from megaomni.models.projector import MLPProjector
from megaomni.models.rotary import rope_2d
from megaomni.models.specs import encoder_layer_spec
from megaomni.ops.attention import segment_params


class VisionEncoder(MegatronModule):
    """``patches [N, C*p*p]`` + ``grids [n_images, 2]`` -> ``[N / merge^2, llm_hidden]``."""

    placeholder = "image"
    batch_fields = ("image_patches", "image_grids")

    def __init__(self, cfg: VisionConfig, config: TransformerConfig, llm_hidden: int, pg_collection=None):
        super().__init__(config=config)
        self.cfg = cfg
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.patch_embed = nn.Linear(cfg.in_channels * cfg.patch_size**2, cfg.hidden_size, bias=False)
        self.blocks = TransformerBlock(config, encoder_layer_spec(), post_layer_norm=True,
                                       pg_collection=pg_collection)
        self.projector = MLPProjector(cfg.hidden_size, llm_hidden, merge=cfg.merge_size**2)

    def forward(self, patches: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        grid_list = grids.tolist()
        positions = torch.cat([patch_positions(h, w, self.cfg.merge_size) for h, w in grid_list])
        positions = positions.to(patches.device)
        rotary = rope_2d(positions, self.head_dim, self.cfg.rotary_base)
        hidden = self.patch_embed(patches.to(self.patch_embed.weight.dtype))[:, None, :]
        hidden = self.blocks(
            hidden_states=hidden,
            attention_mask=None,
            rotary_pos_emb=rotary,
            packed_seq_params=segment_params(grids.prod(-1).to(patches.device)),
        )
        return self.projector(hidden[:, 0, :])
