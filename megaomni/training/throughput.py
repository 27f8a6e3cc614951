"""Model FLOPs per GPU and MFU of a step (the formula: megaomni.flops)."""

from __future__ import annotations

import torch

from megaomni.data.batch import Batch
from megaomni.flops import FlopModel

# Dense bf16 peak, TFLOP/s, by a part of torch.cuda.get_device_name (SXM parts: a PCIe H100 is lower,
# so set train.peak_tflops there).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "B200": 2250.0, "A100": 312.0}


def peak_tflops(device: torch.device, configured: float) -> float:
    """``train.peak_tflops``, else the device's from :data:`PEAK_TFLOPS`; 0: unknown (no MFU)."""
    if configured or device.type != "cuda":
        return configured
    name = torch.cuda.get_device_name(device)
    return next((peak for part, peak in PEAK_TFLOPS.items() if part in name), 0.0)


def batch_flops(model: FlopModel, batch: Batch, pad_id: int) -> float:
    """Model FLOPs of one micro-batch: its samples' own tokens (padding segments and padded
    positions excluded) and its media items."""
    if batch.cu_seqlens is not None:
        seq_lens = torch.diff(batch.cu_seqlens)[:batch.num_samples].tolist()
    else:
        seq_lens = (batch.tokens != pad_id).sum(dim=1).tolist()
    items = [(name, rows) for name, media in batch.media.items() for rows in media.rows]
    return model.training(seq_lens, items)
