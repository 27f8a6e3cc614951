"""Host-to-GPU copies that do not make the host wait for the GPU.

A copy from pageable host memory synchronises the CUDA stream (PyTorch copies it and then waits),
so the host stops until every kernel queued before it, and every receive the stream waits on, has
finished; in a pipeline step that turns overlapped work into lock-step. Page-locked memory copies
asynchronously, in stream order.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for a GPU goes through page-locked memory."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
