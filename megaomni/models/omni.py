"""The omni model: encoders -> projectors -> embedding merge -> LLM -> per-token loss.

Which encoders exist is configuration: one per enabled modality (megaomni.media.registry), each
reading its modality's :class:`MediaBatch` and replacing the embeddings at its pad token.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from megatron.core.transformer.module import MegatronModule
from torch import nn

from megaomni.config import ModelConfig
from megaomni.layers import moe_padding  # noqa: F401  (the padding mask's aux-loss scale, even over ranks)
from megaomni.media.modality import MediaBatch
from megaomni.ops.attention import packed_params


def merge_media(embeddings: torch.Tensor, tokens: torch.Tensor, pad_ids: tuple[int, ...],
                features: torch.Tensor) -> torch.Tensor:
    """Replace the embeddings ``[s, b, h]`` where ``tokens`` is one of ``pad_ids`` (a modality's
    pads: Qwen2-VL's image and video pads both take vision features) by ``features [n, h]``,
    filling positions sample by sample, left to right (the order media are packed in).

    A gather and a select, not boolean indexing, which would read the placeholder count on the
    host and so wait for the GPU. The count is checked where reading it is free (host tensors);
    on the GPU the data pipeline's own check stands (a sample's placeholders match its media)."""
    positions = tokens == pad_ids[0]  # [b, s]
    for pad_id in pad_ids[1:]:
        positions |= tokens == pad_id
    if not tokens.is_cuda:
        count = int(positions.sum())
        if count != features.shape[0]:
            raise ValueError(f"{count} placeholder tokens for {features.shape[0]} encoder outputs")
    if features.shape[0] == 0:
        return embeddings
    rows = (positions.reshape(-1).cumsum(0) - 1).clamp_(min=0)  # each position's feature row
    b, s = positions.shape
    gathered = features.to(embeddings.dtype).index_select(0, rows).view(b, s, -1)
    return torch.where(positions[..., None], gathered, embeddings.transpose(0, 1)).transpose(0, 1)


def whole_sequence(embeddings: torch.Tensor) -> torch.Tensor:
    return embeddings


class OmniModel(MegatronModule):
    """One pipeline stage of the omni model (the whole model without pipelining): the LLM part
    of the stage, plus the encoders on the first stage. ``forward`` returns the per-token loss
    ``[b, s]`` on the last stage (unmasked: the training step applies ``loss_mask``), the hidden
    states for the next stage elsewhere.

    ``shard_sequence`` maps the merged full-length embeddings ``[s, b, h]`` to the part of the
    sequence this rank computes (context / sequence parallelism); the model itself stays unaware
    of how it is parallelised."""

    def __init__(self, cfg: ModelConfig, llm: nn.Module, encoders: dict[str, nn.Module],
                 pad_ids: dict[str, tuple[int, ...]],
                 shard_sequence: Callable[[torch.Tensor], torch.Tensor] = whole_sequence):
        super().__init__(config=llm.config)
        self.model_type = llm.model_type  # megatron-core's schedules read it from the outer model
        self.cfg = cfg
        self.llm = llm
        # megatron-core's schedules read which pipeline ends a chunk holds from the outer model.
        self.pre_process, self.post_process = llm.pre_process, llm.post_process
        # Plain attributes, not a ModuleDict: megatron-core's sharded_state_dict recurses only
        # through MegatronModules, and a ModuleDict would save TP-sharded encoders as replicated.
        self.encoder_names = list(encoders)
        for name, encoder in encoders.items():
            self.add_module(f"{name}_encoder", encoder)
        self.pad_ids = pad_ids  # encoder name -> the token ids its outputs replace
        self.shard_sequence = shard_sequence

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        """Read by megatron-core's gradient finalisation from the outer model (tied embeddings
        across the first and last pipeline stages)."""
        return self.llm.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.llm.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hook of megatron-core's schedules: the activation entering this stage."""
        self.llm.set_input_tensor(input_tensor)

    def embed(self, tokens: torch.Tensor, media: dict[str, MediaBatch],
              features: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Text embeddings with encoder outputs merged in: ``[s, b, h]``, the whole sequence.
        ``features``: the encoder outputs, already computed (modality -> rows in batch order);
        absent, this model's encoders compute them from ``media``."""
        embeddings = self.llm.embedding(input_ids=tokens, position_ids=None)  # RoPE: no position embeddings
        for name, pad_ids in self.pad_ids.items():
            if features is not None:
                rows = features.get(name)
            else:
                rows = getattr(self, f"{name}_encoder")(media[name]) if name in media else None
            if rows is not None:
                embeddings = merge_media(embeddings, tokens, pad_ids, rows)
        return embeddings

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None, media: Optional[dict[str, MediaBatch]] = None,
                features: Optional[dict[str, torch.Tensor]] = None,
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``tokens``, ``position_ids`` ``[b, s]`` (or ``[3, b, s]``: multimodal RoPE): the whole
        sequence; ``labels``: this rank's part of it (see ``shard_sequence``). Packed rows
        (``cu_seqlens``, on the host) keep attention inside each of their samples. ``media``,
        ``features``: see :meth:`embed`. ``padding_mask`` ``[b, s]`` (True on padding): an MoE
        router's balancing leaves those tokens out (a dense LLM ignores it)."""
        decoder_input = self.shard_sequence(self.embed(tokens, media or {}, features)) \
            if self.pre_process else None
        packed = None if cu_seqlens is None else packed_params(cu_seqlens, tokens.device)
        if position_ids.dim() == 2:  # plain RoPE: the rotary's three axes (mrope_section) use the first
            position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
        return self.llm(
            input_ids=tokens,
            position_ids=position_ids,
            attention_mask=None,
            decoder_input=decoder_input,
            labels=labels if self.post_process else None,
            packed_seq_params=packed,
            **({"padding_mask": self.shard_sequence(padding_mask.t()).t()}
               if padding_mask is not None and self.cfg.llm.moe.enabled else {}),
        )
