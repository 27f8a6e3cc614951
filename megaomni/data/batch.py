"""The micro-batch handed from the data pipeline to the training step."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from megaomni.media.modality import MediaBatch
from megaomni.platform.transfer import to_device

TEXT_FIELDS = ("tokens", "labels", "loss_mask", "position_ids")


@dataclass
class Batch:
    """One micro-batch. Text is ``[b, s]``, right-padded; each modality's media are one
    :class:`MediaBatch` (``media[name]``), packed across the batch in the order their
    placeholders appear (sample by sample, left to right).

    - ``labels[i, t]`` is the token to predict at position ``t``; ``loss_mask`` is 1 where that
      prediction is trained (assistant answers), 0 on prompts and padding.
    - Packed (``cu_seqlens`` set): one row (``b == 1``) holding several samples, then a padding
      segment; ``cu_seqlens`` int32 ``[segments + 1]`` are their boundaries (attention stays
      inside each) and ``position_ids`` restart at 0 in each.
    - ``position_ids`` is ``[3, b, s]`` under multimodal RoPE (``model.llm.mrope_section``): the
      temporal, height and width position of each token.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    media: dict[str, MediaBatch] = field(default_factory=dict)
    cu_seqlens: Optional[torch.Tensor] = None
    num_samples: int = 0

    def padding_mask(self) -> Optional[torch.Tensor]:
        """``[1, s]`` bool on the tokens' device, True on a packed row's padding segment: what an
        MoE router leaves out of its balancing (megatron-core's ``padding_mask``), so that the
        aux loss does not depend on how far a layout pads. None unpacked (rows' lengths not kept)."""
        if self.cu_seqlens is None:
            return None
        used = int(self.cu_seqlens[self.num_samples])  # on the host: no device sync
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] >= used

    def to(self, device: torch.device | str) -> "Batch":
        """The tensors kernels read, on ``device``; the shape metadata (``cu_seqlens``, the media's
        sizes) stays on the host, where reading it costs no GPU synchronisation. The models copy
        the little of it their kernels need."""
        return replace(self, **{f: to_device(getattr(self, f), device) for f in TEXT_FIELDS},
                       media={name: m.to(device) for name, m in self.media.items()})

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory, so that ``to(cuda)`` copies asynchronously."""
        return replace(self, **{f: getattr(self, f).pin_memory() for f in TEXT_FIELDS},
                       media={name: m.pin_memory() for name, m in self.media.items()})
