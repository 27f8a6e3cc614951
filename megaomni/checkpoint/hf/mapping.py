"""Declarative name maps between a Hugging Face state dict and megaomni's (one process, the whole
model), in the manner of Megatron-Bridge's mapping registry, written for megaomni's names.

A family's table is a list of rules, each naming megaomni's tensor and the Hugging Face tensors it
is made of; ``{i}`` in a name runs over the LLM's layers. A Hugging Face tensor no rule takes, or a
megaomni tensor no rule fills, is an error that lists the names: nothing is dropped or left random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch


class MappingError(ValueError):
    """A checkpoint that does not fit the table (one line: what is missing or left over)."""


@dataclass(frozen=True)
class Heads:
    """What a fused attention projection's layout depends on."""

    heads: int
    groups: int  # key / value heads
    head_dim: int


@dataclass(frozen=True)
class Direct:
    """The same tensor under another name."""

    ours: str
    theirs: str

    def names(self) -> tuple[str, ...]:
        return (self.theirs,)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0]

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]


@dataclass(frozen=True)
class Reshaped:
    """The same values in another shape: a convolution whose kernel is its stride is a linear map
    of the flattened patch (``theirs_shape``: theirs, e.g. ``[out, C, T, p, p]``)."""

    ours: str
    theirs: str
    theirs_shape: tuple[int, ...]

    def names(self) -> tuple[str, ...]:
        return (self.theirs,)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0].reshape(tensors[0].shape[0], -1)

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor.reshape(self.theirs_shape)]


@dataclass(frozen=True)
class QKV:
    """megatron-core's fused query-key-value projection: for each key / value head, the rows of its
    ``heads / groups`` query heads, then its key's, then its value's (weights or biases alike).
    ``k`` may be "" for a key without a bias (Whisper's): zeros in ours, and nothing in theirs."""

    ours: str
    q: str
    k: str
    v: str
    heads: Heads

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in (self.q, self.k, self.v) if n)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if not self.k:
            tensors = [tensors[0], torch.zeros_like(tensors[1]), tensors[1]]
        q, k, v = tensors
        per_group, d, groups = self.heads.heads // self.heads.groups, self.heads.head_dim, self.heads.groups
        rest = q.shape[1:]
        q = q.reshape(groups, per_group * d, *rest)
        k, v = (t.reshape(groups, d, *rest) for t in (k, v))
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        per_group, d = self.heads.heads // self.heads.groups, self.heads.head_dim
        rest = tensor.shape[1:]
        grouped = tensor.reshape(self.heads.groups, (per_group + 2) * d, *rest)
        q, k, v = (t.reshape(-1, *rest).contiguous() for t in grouped.split([per_group * d, d, d], dim=1))
        if not self.k:
            if k.any():
                raise MappingError(f"{self.ours}: the key's bias is not zero, and this family has none")
            return [q, v]
        return [q, k, v]


@dataclass(frozen=True)
class StackedQKV:
    """One Hugging Face tensor holding the queries', keys' and values' rows one after the other
    (the Qwen2-VL vision tower's ``qkv``), as megatron-core's fused projection."""

    ours: str
    theirs: str
    heads: Heads

    def names(self) -> tuple[str, ...]:
        return (self.theirs,)

    def _split(self) -> QKV:
        return QKV(self.ours, "q", "k", "v", self.heads)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        d, heads, groups = self.heads.head_dim, self.heads.heads, self.heads.groups
        return self._split().to_ours(list(tensors[0].split([heads * d, groups * d, groups * d])))

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [torch.cat(self._split().to_theirs(tensor))]


@dataclass(frozen=True)
class GatedMLP:
    """megatron-core's fused gated MLP input: the gate's rows, then the up projection's."""

    ours: str
    gate: str
    up: str

    def names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(tensors, dim=0)

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [t.contiguous() for t in tensor.chunk(2, dim=0)]


@dataclass(frozen=True)
class Computed:
    """A tensor of ours that the family's checkpoints lack because its model computes it (a
    non-persistent buffer: Qwen2.5-Omni's Whisper position table): ``make()`` on import; on
    export none, and ours must still be ``make()``'s, since the family's model would not read it."""

    ours: str
    make: Callable[[], torch.Tensor]

    def names(self) -> tuple[str, ...]:
        return ()

    def to_ours(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return self.make()

    def to_theirs(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if not torch.equal(tensor.float(), self.make().float()):
            raise MappingError(f"{self.ours}: differs from the table this family computes, and its checkpoints "
                               "cannot hold another")
        return []


def expand(table: list, counts: dict[str, int]) -> list:
    """The rules with each ``{x}`` of ``counts`` replaced by every index below ``counts[x]`` (e.g.
    ``{i}``: the LLM's layers, ``{e}``: its experts); a rule without any, once."""
    out = []
    for rule in table:
        names = {k: v for k, v in vars(rule).items() if isinstance(v, str)}
        indices = [{}]
        for key, count in counts.items():
            if any("{" + key + "}" in v for v in names.values()):
                indices = [{**index, key: n} for index in indices for n in range(count)]
        out += [replace(rule, **{k: v.format(**index) for k, v in names.items()}) for index in indices]
    return out


def prefixed(rule, prefix: str):
    """``rule`` with ``prefix`` before each of its Hugging Face names (a multimodal checkpoint's
    LLM under ``language_model.``); QKV's absent key stays ""."""
    return replace(rule, **{k: prefix + v for k, v in vars(rule).items() if isinstance(v, str) and k != "ours" and v})


def _listed(names) -> str:
    names = sorted(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def to_ours(rules: list, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """megaomni's tensors from Hugging Face's; every tensor of ``theirs`` must be taken."""
    missing = [n for rule in rules for n in rule.names() if n not in theirs]
    if missing:
        raise MappingError(f"the checkpoint lacks {len(missing)} weights the model needs: {_listed(missing)}")
    taken = {n for rule in rules for n in rule.names()}
    if unused := set(theirs) - taken:
        raise MappingError(f"{len(unused)} weights of the checkpoint map to nothing: {_listed(unused)}")
    return {rule.ours: rule.to_ours([theirs[n] for n in rule.names()]) for rule in rules}


def to_theirs(rules: list, ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face's tensors from megaomni's; every rule's tensor must be there, and every tensor
    of ``ours`` taken."""
    if missing := [rule.ours for rule in rules if rule.ours not in ours]:
        raise MappingError(f"the model state lacks {len(missing)} tensors: {_listed(missing)}")
    if unused := set(ours) - {rule.ours for rule in rules}:
        raise MappingError(f"{len(unused)} tensors of the model map to nothing in this family: {_listed(unused)}")
    out = {}
    for rule in rules:
        out.update(zip(rule.names(), rule.to_theirs(ours[rule.ours])))
    return out
