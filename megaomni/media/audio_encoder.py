"""Audio encoder: convolutional stem over log-mel frames, then a bidirectional transformer.

Clips of different lengths are packed into one sequence; attention stays within each clip and
positions (rotary, or a fixed table added to the stem's output) restart at every clip. Knows
nothing of parallelism.

A clip may come inside a window of padding frames (Whisper's 30 s): the stem reads the whole
window, as the Hugging Face encoder does (its last rows read the padding's features), and only
the clip's own rows enter the transformer, as the Hugging Face encoder's attention mask leaves them.
With ``model.audio.chunk_frames`` (Qwen2.5-Omni) only the clip's own frames are read, in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from megaomni.config import AudioConfig
from megaomni.layers.projector import MLPProjector, PoolProjector
from megaomni.layers.rotary import rope_1d, whisper_sinusoids
from megaomni.layers.specs import NORM_MODULES, encoder_layer_spec
from megaomni.media.modality import MediaBatch
from megaomni.ops.attention import segment_params
from megaomni.platform.transfer import to_device


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return (a + b - 1) // b


def chunked(features: torch.Tensor, lengths: torch.Tensor, valid: torch.Tensor | None,
            size: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Clips of ``lengths`` frames of ``features``, their first ``valid`` (None: all) in chunks
    of ``size`` frames, the last of a clip shorter -> the chunks' frames, their lengths, and the
    number of chunks of each clip."""
    own = lengths if valid is None else valid
    pieces = [clip[:n] for clip, n in zip(torch.split(features, lengths.tolist()), own.tolist())]
    chunks = [list(torch.split(piece, size)) for piece in pieces]
    flat = [chunk for clip in chunks for chunk in clip]
    return torch.cat(flat), torch.tensor([c.shape[0] for c in flat]), [len(clip) for clip in chunks]


class AudioEncoder(MegatronModule):
    """A :class:`MediaBatch` of clips -> ``[sum tokens, llm_hidden]``: ``values`` log-mel features
    ``[F, n_mels]``, ``sizes`` ``[n_clips, 1]`` each clip's frames of them, ``info["valid_frames"]``
    the clip's own frames at the start of those (a window's padding after them; absent or 0: all)."""

    def __init__(self, cfg: AudioConfig, config: TransformerConfig, llm_hidden: int, pg_collection=None):
        super().__init__(config=config)
        self.cfg = cfg
        self.merge = cfg.downsample // cfg.stem_stride
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.pool = cfg.projector == "pool_linear"
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=3, stride=cfg.stem_stride, padding=1)
        if cfg.position_embedding == "sinusoidal":  # a buffer: saved and loaded, never trained (as Whisper's)
            self.register_buffer("position_embedding", whisper_sinusoids(cfg.max_positions, cfg.hidden_size))
        if cfg.bos_eos_embedding:  # never read: carried, untrained, so that an export writes it back
            self.register_buffer("bos_eos_embedding", torch.zeros(2, llm_hidden))
        # pool_linear normalises after pooling: the norm is the projector's, not the blocks'.
        self.blocks = TransformerBlock(config, encoder_layer_spec(cfg.norm), post_layer_norm=not self.pool,
                                       pg_collection=pg_collection)
        if self.pool:
            norm = NORM_MODULES[cfg.norm](config, cfg.hidden_size, cfg.norm_eps)
            self.projector = PoolProjector(cfg.hidden_size, llm_hidden, self.merge, norm)
        else:
            self.projector = MLPProjector(cfg.hidden_size, llm_hidden, merge=self.merge)

    def stem(self, features: torch.Tensor, lengths: torch.Tensor,
             valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the convolutions on every clip's ``lengths`` frames -> the rows of its first
        ``valid`` frames (None: all), packed ``[sum rows, hidden]``, and ``rows``.

        Clips are zero-padded to a common length and convolved as one batch. Each convolution
        must see zeros past its clip's end, as it would alone: true of the input, and made true
        of ``conv1``'s output (bias + GELU make it non-zero there) before ``conv2`` reads it.
        """
        clips = torch.split(features, lengths.tolist())
        batch = nn.utils.rnn.pad_sequence(clips, batch_first=True).transpose(1, 2)  # [n, mels, T]
        hidden = F.gelu(self.conv1(batch.to(self.conv1.weight.dtype)))
        frames = torch.arange(hidden.shape[-1], device=hidden.device)
        mask = frames[None, :] < to_device(lengths, hidden.device)[:, None]
        hidden = hidden * mask[:, None, :].to(hidden.dtype)
        out = F.gelu(self.conv2(hidden)).transpose(1, 2)  # [n, T', hidden]
        rows = _ceil_div(lengths if valid is None else valid, self.cfg.stem_stride)
        return torch.cat([out[i, :n] for i, n in enumerate(rows.tolist())]), rows

    def forward(self, media: MediaBatch) -> torch.Tensor:
        # sizes, info: host tensors (MediaBatch.to leaves shape metadata there), read without a sync.
        lengths = media.sizes[:, 0]
        valid = media.info.get("valid_frames")
        if valid is not None:  # 0: the whole clip
            valid = torch.where(valid > 0, valid, lengths)
        features, clips = media.values, None
        if self.cfg.chunk_frames:  # Qwen2.5-Omni: chunks are the stem's and the blocks' inputs
            features, lengths, clips = chunked(features, lengths, valid, self.cfg.chunk_frames)
            valid = None
        hidden, rows = self.stem(features, lengths, valid)
        if self.pool:
            block_rows = rows
        else:  # zero rows up to whole groups, so that merging never mixes clips
            block_rows = _ceil_div(rows, self.merge) * self.merge
            pieces = torch.split(hidden, rows.tolist())
            hidden = torch.cat([F.pad(p, (0, 0, 0, n - p.shape[0])) for p, n in zip(pieces, block_rows.tolist())])
        positions = to_device(torch.cat([torch.arange(n) for n in block_rows.tolist()]), hidden.device)
        angles = None
        if self.cfg.position_embedding == "sinusoidal":
            if int(block_rows.max()) > self.cfg.max_positions:
                raise ValueError(f"a clip of {int(block_rows.max())} transformer rows: more than "
                                 f"model.audio.max_positions={self.cfg.max_positions}")
            hidden = hidden + self.position_embedding[positions].to(hidden.dtype)
        else:
            angles = rope_1d(positions, self.head_dim, self.cfg.rotary_base)
        hidden = self.blocks(
            hidden_states=hidden[:, None, :],
            attention_mask=None,
            rotary_pos_emb=None,  # applied by our attention core from tables made once (segment_params)
            packed_seq_params=segment_params(block_rows, hidden.device, angles, hidden.dtype),
        )[:, 0, :]
        if self.pool:  # each clip's whole groups only
            rows = rows if clips is None else torch.stack([r.sum() for r in torch.split(rows, clips)])
            kept = (rows // self.merge) * self.merge
            hidden = torch.cat([p[:n] for p, n in zip(torch.split(hidden, rows.tolist()), kept.tolist())])
        return self.projector(hidden)
