"""The omni model: encoders -> projectors -> embedding merge -> LLM -> per-token loss.

Which encoders exist is configuration: :data:`ENCODERS` maps a ``ModelConfig`` field name to its
encoder class. Each encoder class names the ``Batch`` fields it reads (``batch_fields``) and its
placeholder (``placeholder``: the tokenizer's ``<|{placeholder}_pad|>`` token, whose positions
its outputs replace). Adding a modality is a new encoder class, a config field and an entry here.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from torch import nn

from megaomni.config import ModelConfig
from megaomni.data.batch import Batch
from megaomni.models.audio import AudioEncoder
from megaomni.models.vision import VisionEncoder

ENCODERS: dict[str, type] = {"vision": VisionEncoder, "audio": AudioEncoder}


def merge_media(embeddings: torch.Tensor, tokens: torch.Tensor, pad_id: int,
                features: torch.Tensor) -> torch.Tensor:
    """Replace the embeddings ``[s, b, h]`` at ``tokens == pad_id`` by ``features [n, h]``,
    filling positions sample by sample, left to right (the order media are packed in)."""
    positions = tokens == pad_id  # [b, s]
    count = int(positions.sum())
    if count != features.shape[0]:
        raise ValueError(f"{count} placeholder tokens for {features.shape[0]} encoder outputs")
    merged = embeddings.transpose(0, 1).clone()
    merged[positions] = features.to(merged.dtype)
    return merged.transpose(0, 1)


class OmniModel(MegatronModule):
    """Holds the LLM and one encoder per enabled modality; forward returns the per-token loss
    ``[b, s]`` (unmasked: the training step applies ``loss_mask``)."""

    def __init__(self, cfg: ModelConfig, llm: nn.Module, encoders: dict[str, nn.Module],
                 pad_ids: dict[str, int]):
        super().__init__(config=llm.config)
        self.model_type = llm.model_type  # megatron-core's schedules read it from the outer model
        self.cfg = cfg
        self.llm = llm
        # Plain attributes, not a ModuleDict: megatron-core's sharded_state_dict recurses only
        # through MegatronModules, and a ModuleDict would save TP-sharded encoders as replicated.
        self.encoder_names = list(encoders)
        for name, encoder in encoders.items():
            self.add_module(f"{name}_encoder", encoder)
        self.pad_ids = pad_ids  # encoder name -> placeholder token id

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hook of megatron-core's schedules: the activation entering this stage."""
        self.llm.set_input_tensor(input_tensor)

    def embed(self, batch: Batch) -> torch.Tensor:
        """Text embeddings with encoder outputs merged in: ``[s, b, h]``."""
        embeddings = self.llm.embedding(input_ids=batch.tokens, position_ids=batch.position_ids)
        for name in self.encoder_names:
            encoder = getattr(self, f"{name}_encoder")
            inputs = [getattr(batch, f) for f in encoder.batch_fields]
            if inputs[0] is None:
                continue
            embeddings = merge_media(embeddings, batch.tokens, self.pad_ids[name], encoder(*inputs))
        return embeddings

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.llm(
            input_ids=batch.tokens,
            position_ids=batch.position_ids,
            attention_mask=None,
            decoder_input=self.embed(batch),
            labels=batch.labels,
        )
