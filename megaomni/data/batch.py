"""The micro-batch handed from the data pipeline to the model."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from megaomni.platform.transfer import to_device

# Sizes and boundaries: read on the host every micro-batch (see Batch.to).
HOST_FIELDS = ("image_grids", "image_times", "audio_lengths", "cu_seqlens")


@dataclass
class Batch:
    """One micro-batch. Text is ``[b, s]``, right-padded; media are packed across the batch
    in the order their placeholders appear (sample by sample, left to right).

    - ``labels[i, t]`` is the token to predict at position ``t``; ``loss_mask`` is 1 where that
      prediction is trained (assistant answers), 0 on prompts and padding.
    - ``image_patches`` ``[total_patches, channels*patch*patch]`` in
      :func:`megaomni.models.media_layout.patch_positions` order, ``image_grids`` ``[n_images, 2]``
      (patch rows, patch cols), ``image_times`` ``[n_images]`` each image's frame index in its
      video (0 for a still image; None: all 0).
    - ``audio_features`` ``[total_frames, n_mels]`` log-mel, ``audio_lengths`` ``[n_clips]``.
    - Packed (``cu_seqlens`` set): one row (``b == 1``) holding several samples, then a padding
      segment; ``cu_seqlens`` int32 ``[segments + 1]`` are their boundaries (attention stays
      inside each) and ``position_ids`` restart at 0 in each.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    image_patches: Optional[torch.Tensor] = None
    image_grids: Optional[torch.Tensor] = None
    image_times: Optional[torch.Tensor] = None
    audio_features: Optional[torch.Tensor] = None
    audio_lengths: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    num_samples: int = 0

    def to(self, device: torch.device | str) -> "Batch":
        """The tensors kernels read, on ``device``; the shape metadata (:data:`HOST_FIELDS`)
        stays on the host, where reading it (sizes, boundaries) costs no GPU synchronisation.
        The models copy the little of it their kernels need."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = to_device(value, device) if torch.is_tensor(value) and f.name not in HOST_FIELDS else value
        return Batch(**moved)

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory, so that ``to(cuda)`` copies asynchronously."""
        return replace(self, **{f.name: getattr(self, f.name).pin_memory() for f in fields(self)
                                if torch.is_tensor(getattr(self, f.name))})
