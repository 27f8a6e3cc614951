"""A micro-batch's media items (images, audio clips), how they are split into per-rank shares,
and how the shares' encoder outputs are put back together in the order the LLM embeds them.

Encoders treat every item independently (attention stays inside an image or a clip), so an item
encoded on any rank gives the same outputs: a share is a smaller batch of whole items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megaomni.media.modality import MediaBatch


@dataclass(frozen=True)
class Item:
    modality: str  # a modality's name: "vision", "audio", ...
    index: int  # within its modality, in batch order
    size: int  # encoder input length: patches or frames
    outputs: int  # LLM tokens it becomes


def media_items(media: dict[str, MediaBatch]) -> list[Item]:
    """Every media item of a micro-batch's ``media``: each modality's in order, modality after
    modality (images, then clips)."""
    return [Item(name, i, rows, tokens) for name, batch in media.items()
            for i, (rows, tokens) in enumerate(zip(batch.rows, batch.tokens))]


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


def share_inputs(media: dict[str, MediaBatch], items: list[Item], share: tuple[int, ...]) -> dict[str, MediaBatch]:
    """Encoder inputs of the items in ``share``, per modality."""
    chosen: dict[str, list[int]] = {}
    for i in share:
        chosen.setdefault(items[i].modality, []).append(items[i].index)
    return {name: media[name].select(indices) for name, indices in chosen.items()}


def merge_inputs(parts: list[dict[str, MediaBatch]]) -> dict[str, MediaBatch]:
    """One encoder call's inputs from several shares' (:func:`share_inputs`, in order)."""
    names = sorted({n for part in parts for n in part})
    return {name: MediaBatch.cat([part[name] for part in parts if name in part]) for name in names}


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
