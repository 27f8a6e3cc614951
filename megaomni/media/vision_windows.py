"""Windowed attention in the vision encoder (Qwen2.5-VL's): each image's merged tokens (its groups
of ``merge x merge`` adjacent patches, see megaomni.media.images.patch_positions) regrouped
window by window, so that every window is one contiguous segment of the encoder's sequence.

A window is ``side x side`` merged tokens; windows run row-major over the image, the last of a
row or column partial, and a window's tokens stay row-major inside it (Hugging Face's
``get_vision_window_index``). Attention stays inside each window, except in the full-attention
layers, which see the whole image (megaomni.ops.attention.RotaryPackedSeqParams.for_layer)."""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megaomni.ops.attention import RotaryPackedSeqParams, SegmentParams, segment_params
from megaomni.platform.transfer import to_device


@lru_cache(maxsize=256)
def image_windows(height: int, width: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens of a ``height x width`` grid of merged tokens (row-major indices) window by
    window, and each window's token count."""
    rows, cols = -(-height // side), -(-width // side)
    index = torch.full((rows * side, cols * side), -1)
    index[:height, :width] = torch.arange(height * width).view(height, width)
    index = index.view(rows, side, cols, side).permute(0, 2, 1, 3).reshape(rows * cols, side * side)
    kept = index >= 0
    return index[kept], kept.sum(1)


class Windows:
    """The window order of a batch of images (``grids``: patches ``[n, 2]``, on the host)."""

    def __init__(self, grids: torch.Tensor, merge: int, side: int, device: torch.device):
        orders, counts, start = [], [], 0
        for h, w in grids.tolist():
            order, tokens = image_windows(h // merge, w // merge, side)
            orders.append(order + start)
            counts.append(tokens)
            start += order.numel()
        order = torch.cat(orders)
        self.unit = merge * merge
        self.lengths = torch.cat(counts) * self.unit  # patches of each window, on the host
        self.order = to_device(order, device)
        self.inverse = to_device(torch.argsort(order), device)

    def _take(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.unit, *x.shape[1:])[index].reshape(x.shape)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows ``[N, ...]`` in the images' order -> in window order."""
        return self._take(x, self.order)

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Rows in window order -> in the images' order."""
        return self._take(x, self.inverse)

    def segment(self, params: RotaryPackedSeqParams, full_layers: list[int]) -> RotaryPackedSeqParams:
        """``params`` of whole images (:func:`segment_params` with angles) -> the windows' params,
        rotary tables in window order, the whole images' boundaries for ``full_layers``."""
        windows = segment_params(self.lengths, params.cu_seqlens_q.device)
        plain = {f.name for f in fields(PackedSeqParams)}
        return RotaryPackedSeqParams(
            **{name: getattr(windows, name) for name in plain}, rotary_cos=self.gather(params.rotary_cos),
            rotary_sin=self.gather(params.rotary_sin),
            lengths=windows.lengths, full_layers=tuple(full_layers),
            full=SegmentParams(**{name: getattr(params, name) for name in plain}, lengths=params.lengths))
