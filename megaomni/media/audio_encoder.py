"""Audio encoder: convolutional stem over log-mel frames, then a bidirectional transformer.

Clips of different lengths are packed into one sequence; attention stays within each clip and
rotary positions restart at every clip. Knows nothing of parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megaomni.config import AudioConfig
from megaomni.layers.projector import MLPProjector
from megaomni.layers.rotary import rope_1d
from megaomni.layers.specs import encoder_layer_spec
from megaomni.media.modality import MediaBatch
from megaomni.ops.attention import segment_params
from megaomni.platform.transfer import to_device


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return (a + b - 1) // b


class AudioEncoder(MegatronModule):
    """A :class:`MediaBatch` of clips (``values`` log-mel features ``[F, n_mels]``, ``sizes``
    ``[n_clips, 1]`` their frames) -> ``[sum ceil(len/downsample), llm_hidden]``."""

    def __init__(self, cfg: AudioConfig, config: TransformerConfig, llm_hidden: int, pg_collection=None):
        super().__init__(config=config)
        self.cfg = cfg
        self.merge = cfg.downsample // cfg.stem_stride
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=3, stride=cfg.stem_stride, padding=1)
        self.blocks = TransformerBlock(config, encoder_layer_spec(cfg.norm), post_layer_norm=True,
                                       pg_collection=pg_collection)
        self.projector = MLPProjector(cfg.hidden_size, llm_hidden, merge=self.merge)

    def stem(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the convolutions on every clip -> packed ``[sum out_len, hidden]``, ``out_len``.

        Clips are zero-padded to a common length and convolved as one batch. Each convolution
        must see zeros past its clip's end, as it would alone: true of the input, and made true
        of ``conv1``'s output (bias + GELU make it non-zero there) before ``conv2`` reads it.
        """
        clips = torch.split(features, lengths.tolist())
        batch = nn.utils.rnn.pad_sequence(clips, batch_first=True).transpose(1, 2)  # [n, mels, T]
        hidden = F.gelu(self.conv1(batch.to(self.conv1.weight.dtype)))
        valid = torch.arange(hidden.shape[-1], device=hidden.device)[None, :] < to_device(lengths, hidden.device)[:, None]
        hidden = hidden * valid[:, None, :].to(hidden.dtype)
        out = F.gelu(self.conv2(hidden)).transpose(1, 2)  # [n, T', hidden]
        out_lengths = _ceil_div(lengths, self.cfg.stem_stride)
        return torch.cat([out[i, :n] for i, n in enumerate(out_lengths.tolist())]), out_lengths

    def forward(self, media: MediaBatch) -> torch.Tensor:
        # lengths: a host tensor (MediaBatch.to leaves shape metadata there), read without a sync.
        hidden, stem_lengths = self.stem(media.values, media.sizes[:, 0])
        # Pad every clip to a multiple of the projector's merge so merging never mixes clips.
        padded_lengths = _ceil_div(stem_lengths, self.merge) * self.merge
        pieces = torch.split(hidden, stem_lengths.tolist())
        hidden = torch.cat([F.pad(p, (0, 0, 0, n - p.shape[0])) for p, n in zip(pieces, padded_lengths.tolist())])
        positions = to_device(torch.cat([torch.arange(n) for n in padded_lengths.tolist()]), hidden.device)
        hidden = self.blocks(
            hidden_states=hidden[:, None, :],
            attention_mask=None,
            rotary_pos_emb=None,  # applied by our attention core from tables made once (segment_params)
            packed_seq_params=segment_params(padded_lengths, hidden.device,
                                             rope_1d(positions, self.head_dim, self.cfg.rotary_base), hidden.dtype),
        )
        return self.projector(hidden[:, 0, :])
