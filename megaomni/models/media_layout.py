"""How media become tokens: shared by the data pipeline (placeholder counts, patch order) and the
encoders (2D positions, output lengths), so the two can never disagree."""

import torch


def patch_positions(grid_h: int, grid_w: int, merge: int) -> torch.Tensor:
    """(row, col) of every patch, in the order the encoder sees them: the ``merge x merge``
    patches that become one LLM token are adjacent, so merging is a reshape. Shape [h*w, 2]."""
    if grid_h % merge or grid_w % merge:
        raise ValueError(f"patch grid {grid_h}x{grid_w} is not a multiple of merge size {merge}")
    rows = torch.arange(grid_h).view(grid_h // merge, merge, 1, 1).expand(-1, -1, grid_w // merge, merge)
    cols = torch.arange(grid_w).view(1, 1, grid_w // merge, merge).expand(grid_h // merge, merge, -1, -1)
    # [H/m, m, W/m, m] -> [H/m, W/m, m, m]: token-major, then the patches inside a token
    rows = rows.permute(0, 2, 1, 3).reshape(-1)
    cols = cols.permute(0, 2, 1, 3).reshape(-1)
    return torch.stack([rows, cols], dim=-1)


def vision_tokens(grid_h: int, grid_w: int, merge: int) -> int:
    """LLM tokens an image of ``grid_h x grid_w`` patches turns into."""
    return (grid_h // merge) * (grid_w // merge)


def audio_tokens(frames: int, downsample: int) -> int:
    """LLM tokens a clip of ``frames`` log-mel frames turns into (frames are padded up)."""
    return -(-frames // downsample)
