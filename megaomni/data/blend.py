"""The sample stream: each data set's own run of per-epoch permutations, several data sets
interleaved by weight.

Stream position p draws its data set at random by weight (blocks of draws, each seeded from
``data.seed`` and its block number, so any position is reached without replaying the ones
before it); that data set gives its next sample. A position in the stream is therefore the number
of samples taken plus each data set's epoch and offset, which is what a checkpoint holds. One data
set draws nothing: its stream is exactly its permutations, epoch after epoch.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch

BLOCK = 4096  # stream positions whose data sets are drawn at once
# Generator streams: data set d's permutations use stream d, the blend draws this one.
BLEND_STREAM = 1 << 16


def stream_seed(seed: int, stream: int, n: int) -> int:
    """The seed of the ``n``-th generator (epoch or block) of ``stream``; stream 0 is
    ``seed + n``, the single data set's order since before blending."""
    return seed + n + (stream << 32)


class SampleStream:
    """Indices into the data sets' samples concatenated (data set d's sample i is
    ``starts[d] + i``), in training order."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        if len(sizes) != len(weights) or not sizes or min(sizes) < 1 or min(weights) <= 0:
            raise ValueError(f"data sets of sizes {sizes}, weights {weights}: need one positive weight per "
                             "non-empty data set")
        self.sizes, self.seed = list(sizes), seed
        self.starts = [0, *itertools.accumulate(sizes)][:-1]
        total = sum(weights)
        self.cumulative = torch.tensor(list(itertools.accumulate(w / total for w in weights)), dtype=torch.float64)
        self.position = 0  # samples taken so far: the next stream position
        self.epochs = [0] * len(sizes)
        self.offsets = [0] * len(sizes)  # position of each data set's next sample in its epoch's permutation
        self._permutations: dict[tuple[int, int], list[int]] = {}
        self._block: tuple[int, list[int]] = (-1, [])

    def _permutation(self, dataset: int, epoch: int):
        key = (dataset, epoch)
        if key not in self._permutations:
            # Keep the previous epoch too: a lookahead across an epoch's end goes back to it.
            self._permutations = {k: v for k, v in self._permutations.items() if k[0] != dataset or k[1] >= epoch - 1}
            generator = torch.Generator().manual_seed(stream_seed(self.seed, dataset, epoch))
            # An array, not a list: 4 bytes a sample (a corpus of 100M samples holds one or two epochs').
            order = torch.randperm(self.sizes[dataset], generator=generator)
            self._permutations[key] = order.to(torch.int32 if self.sizes[dataset] < 2**31 else torch.int64).numpy()
        return self._permutations[key]

    def dataset_at(self, position: int) -> int:
        """The data set that stream position ``position`` takes its sample from."""
        if len(self.sizes) == 1:
            return 0
        block, at = divmod(position, BLOCK)
        if self._block[0] != block:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, BLEND_STREAM, block))
            draws = torch.rand(BLOCK, generator=generator, dtype=torch.float64)
            chosen = torch.searchsorted(self.cumulative, draws, right=True).clamp_(max=len(self.sizes) - 1)
            self._block = (block, chosen.tolist())
        return self._block[1][at]

    def _walk(self) -> Iterator[tuple[int, tuple[int, list[int], list[int]]]]:
        """(sample index, stream state after it) from the current position on; changes nothing."""
        position, epochs, offsets = self.position, list(self.epochs), list(self.offsets)
        while True:
            d = self.dataset_at(position)
            index = self.starts[d] + int(self._permutation(d, epochs[d])[offsets[d]])
            position, offsets[d] = position + 1, offsets[d] + 1
            if offsets[d] == self.sizes[d]:  # an epoch's tail runs into the next
                epochs[d], offsets[d] = epochs[d] + 1, 0
            yield index, (position, epochs, offsets)

    def peek(self) -> Iterator[int]:
        """The coming sample indices, without taking them."""
        return (index for index, _ in self._walk())

    def take(self, count: int) -> list[int]:
        """The next ``count`` sample indices, taken."""
        indices, state = [], (self.position, self.epochs, self.offsets)
        for index, state in itertools.islice(self._walk(), count):
            indices.append(index)
        self.position, self.epochs, self.offsets = state[0], list(state[1]), list(state[2])
        return indices

    def state_dict(self) -> dict:
        """One data set: ``{epoch, offset, consumed_samples}`` (as before blending); several:
        ``{consumed_samples, datasets: [{epoch, offset}, ...]}``. ``consumed_samples`` is the
        stream position."""
        if len(self.sizes) == 1:
            return {"epoch": self.epochs[0], "offset": self.offsets[0], "consumed_samples": self.position}
        return {"consumed_samples": self.position,
                "datasets": [{"epoch": e, "offset": o} for e, o in zip(self.epochs, self.offsets)]}

    def load_state_dict(self, state: dict, names: list[str]) -> None:
        """``names``: the data sets' directories, for messages."""
        def ints(entry, *keys) -> bool:
            return isinstance(entry, dict) and all(isinstance(entry.get(k), int) and entry[k] >= 0 for k in keys)

        one = len(self.sizes) == 1
        entries = [state] if one else state.get("datasets") if isinstance(state, dict) else None
        if not (ints(state, "consumed_samples") and isinstance(entries, list) and len(entries) == len(self.sizes)
                and all(ints(entry, "epoch", "offset") for entry in entries)):
            needs = "epoch, offset, consumed_samples" if one else \
                f"consumed_samples, and epoch, offset for each of the {len(names)} data sets of data.path"
            raise ValueError(f"data loader state {state!r}: needs non-negative ints {needs}")
        for entry, size, name in zip(entries, self.sizes, names):
            if entry["offset"] >= size:
                raise ValueError(f"data loader state offset={entry['offset']} is past the {size} usable samples "
                                 f"of data.path={name}: was the data set changed?")
        self.position = state["consumed_samples"]
        self.epochs = [entry["epoch"] for entry in entries]
        self.offsets = [entry["offset"] for entry in entries]
