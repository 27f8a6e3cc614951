"""A micro-batch's media items (images, audio clips), how they are split into per-rank shares,
and how the shares' encoder outputs are put back together in the order the LLM embeds them.

Encoders treat every item independently (attention stays inside an image or a clip), so an item
encoded on any rank gives the same outputs: a share is a smaller batch of whole items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaomni.data.batch import Batch
from megaomni.models.media_layout import audio_tokens, vision_tokens
from megaomni.platform.transfer import to_device


@dataclass(frozen=True)
class Item:
    modality: str  # an encoder name: "vision" | "audio"
    index: int  # within its modality, in batch order
    size: int  # encoder input length: patches or frames
    outputs: int  # LLM tokens it becomes


def media_items(batch: Batch, merge: int, downsample: int) -> list[Item]:
    """Every media item of ``batch``: images in order, then clips."""
    items = []
    if batch.image_grids is not None:
        for i, (h, w) in enumerate(batch.image_grids.tolist()):
            items.append(Item("vision", i, h * w, vision_tokens(h, w, merge)))
    if batch.audio_lengths is not None:
        for i, n in enumerate(batch.audio_lengths.tolist()):
            items.append(Item("audio", i, n, audio_tokens(n, downsample)))
    return items


def split_shares(costs: list[float], weights: list[float], loads: list[float] | None = None) -> list[tuple[int, ...]]:
    """Item indices for each rank, largest first to the rank with the least load (cost /
    weight), ties to the later rank (later pipeline ranks idle longest at the start and end of a
    step); a rank of weight 0 gets nothing. Each share keeps batch order. ``loads`` (per rank,
    updated in place) carries the balance over from earlier micro-batches, so that micro-batches
    of fewer items than ranks still spread over all of them."""
    ranks = [r for r, w in enumerate(weights) if w > 0]
    load = loads if loads is not None else [0.0] * len(weights)
    shares: list[list[int]] = [[] for _ in weights]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(ranks, key=lambda r: ((load[r] + costs[i]) / weights[r], -r))
        load[rank] += costs[i]
        shares[rank].append(i)
    return [tuple(sorted(s)) for s in shares]


def whole_shares(costs: list[float], weights: list[float], loads: list[float] | None = None) -> list[tuple[int, ...]]:
    """All of a micro-batch's items to one rank, chosen as :func:`split_shares` would place one
    item of their total cost: one encoder call per micro-batch, as under the baseline, for when
    each call's floor (the host's time to launch it) outweighs a finer balance."""
    if not costs:
        return [()] * len(weights)
    chosen = split_shares([sum(costs)], weights, loads)
    return [tuple(range(len(costs))) if share else () for share in chosen]


def _rows(lengths: list[int], chosen: list[int]) -> torch.Tensor:
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return torch.cat([torch.arange(starts[i], starts[i + 1]) for i in chosen])


def share_inputs(batch: Batch, items: list[Item], share: tuple[int, ...]) -> dict[str, list]:
    """Encoder inputs (``encoder.batch_fields`` order) of the items in ``share``, per modality.
    Sizes come from the batch's host metadata (see ``Batch.to``); only the row indices cross to
    the device, asynchronously."""
    inputs: dict[str, list] = {}
    images = [items[i].index for i in share if items[i].modality == "vision"]
    if images:
        rows = to_device(_rows(batch.image_grids.prod(-1).tolist(), images), batch.image_patches.device)
        times = None if batch.image_times is None else batch.image_times[images]
        inputs["vision"] = [batch.image_patches[rows], batch.image_grids[images], times]
    clips = [items[i].index for i in share if items[i].modality == "audio"]
    if clips:
        rows = to_device(_rows(batch.audio_lengths.tolist(), clips), batch.audio_features.device)
        inputs["audio"] = [batch.audio_features[rows], batch.audio_lengths[clips]]
    return inputs


def merge_inputs(parts: list[dict[str, list]]) -> dict[str, list]:
    """One encoder call's inputs from several shares' (:func:`share_inputs`, in order): per
    modality, each field concatenated. A share without ``image_times`` counts as frame 0, which
    has no temporal offset."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[str, list] = {}
    for name in sorted({n for part in parts for n in part}):
        fields = [part[name] for part in parts if name in part]
        columns = []
        for i, column in enumerate(zip(*fields)):
            if all(t is None for t in column):
                columns.append(None)
                continue
            if name == "vision" and i == 2:  # times, per image: as many as grid rows
                column = [t if t is not None else torch.zeros(len(f[1]), dtype=torch.long)
                          for t, f in zip(column, fields)]
            columns.append(torch.cat(column))
        merged[name] = columns
    return merged


def split_outputs(outputs: dict[str, torch.Tensor], counts: list[dict[str, int]]) -> list[dict[str, torch.Tensor]]:
    """An encoder call's outputs (modality -> rows) back into its shares' (``counts``: each
    share's :func:`share_outputs`, in call order)."""
    pieces: list[dict[str, torch.Tensor]] = [{} for _ in counts]
    for name, rows in outputs.items():
        sizes = [c.get(name, 0) for c in counts]
        for piece, size, part in zip(pieces, sizes, rows.split(sizes)):
            if size:
                piece[name] = part
    return pieces


def share_outputs(items: list[Item], share: tuple[int, ...]) -> dict[str, int]:
    """Rows of encoder output per modality that ``share`` yields."""
    counts: dict[str, int] = {}
    for i in share:
        counts[items[i].modality] = counts.get(items[i].modality, 0) + items[i].outputs
    return counts


def assemble(items: list[Item], shares: list[tuple[int, ...]],
             outputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each modality's encoder outputs in batch order, from every rank's share outputs
    (``outputs[r]``: modality -> rows of rank ``r``'s share). Differentiable."""
    pieces: dict[str, list] = {}
    for share, out in zip(shares, outputs):
        offsets: dict[str, int] = {}
        for i in share:
            item = items[i]
            start = offsets.get(item.modality, 0)
            offsets[item.modality] = start + item.outputs
            pieces.setdefault(item.modality, []).append((item.index, out[item.modality][start:start + item.outputs]))
    return {name: torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])]) for name, parts in pieces.items()}
