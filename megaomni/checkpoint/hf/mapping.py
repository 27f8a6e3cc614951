"""Declarative name maps between a Hugging Face state dict and megaomni's (one process, the whole
model), in the manner of Megatron-Bridge's mapping registry, written for megaomni's names.

A family's table is a list of rules, each naming megaomni's tensor and the Hugging Face tensors it
is made of; ``{i}`` in a name runs over the LLM's layers. A Hugging Face tensor no rule takes, or a
megaomni tensor no rule fills, is an error that lists the names: nothing is dropped or left random.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def to_ours(self, tensors: list[torch.Tensor], heads: Heads) -> torch.Tensor:
        return tensors[0]

    def to_theirs(self, tensor: torch.Tensor, heads: Heads) -> list[torch.Tensor]:
        return [tensor]


@dataclass(frozen=True)
class QKV:
    """megatron-core's fused query-key-value projection: for each key / value head, the rows of its
    ``heads / groups`` query heads, then its key's, then its value's (weights or biases alike)."""

    ours: str
    q: str
    k: str
    v: str

    def names(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v)

    def to_ours(self, tensors: list[torch.Tensor], heads: Heads) -> torch.Tensor:
        q, k, v = tensors
        per_group, d = heads.heads // heads.groups, heads.head_dim
        rest = q.shape[1:]
        q = q.reshape(heads.groups, per_group * d, *rest)
        k, v = (t.reshape(heads.groups, d, *rest) for t in (k, v))
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)

    def to_theirs(self, tensor: torch.Tensor, heads: Heads) -> list[torch.Tensor]:
        per_group, d = heads.heads // heads.groups, heads.head_dim
        rest = tensor.shape[1:]
        grouped = tensor.reshape(heads.groups, (per_group + 2) * d, *rest)
        q, k, v = grouped.split([per_group * d, d, d], dim=1)
        return [t.reshape(-1, *rest).contiguous() for t in (q, k, v)]


@dataclass(frozen=True)
class GatedMLP:
    """megatron-core's fused gated MLP input: the gate's rows, then the up projection's."""

    ours: str
    gate: str
    up: str

    def names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def to_ours(self, tensors: list[torch.Tensor], heads: Heads) -> torch.Tensor:
        return torch.cat(tensors, dim=0)

    def to_theirs(self, tensor: torch.Tensor, heads: Heads) -> list[torch.Tensor]:
        return [t.contiguous() for t in tensor.chunk(2, dim=0)]


def expand(table: list, layers: int, experts: int = 0) -> list:
    """The rules with ``{i}`` replaced by every layer index and ``{e}`` by every expert index
    (a rule without them once)."""
    out = []
    for rule in table:
        fields = vars(rule)
        names = " ".join(fields.values())
        indices = [dict(i=i, e=e) for i in (range(layers) if "{i}" in names else [0])
                   for e in (range(experts) if "{e}" in names else [0])]
        out += [type(rule)(**{k: v.format(**index) for k, v in fields.items()}) for index in indices]
    return out


def _listed(names) -> str:
    names = sorted(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def to_ours(rules: list, theirs: dict[str, torch.Tensor], heads: Heads) -> dict[str, torch.Tensor]:
    """megaomni's tensors from Hugging Face's; every tensor of ``theirs`` must be taken."""
    missing = [n for rule in rules for n in rule.names() if n not in theirs]
    if missing:
        raise MappingError(f"the checkpoint lacks {len(missing)} weights the model needs: {_listed(missing)}")
    taken = {n for rule in rules for n in rule.names()}
    if unused := set(theirs) - taken:
        raise MappingError(f"{len(unused)} weights of the checkpoint map to nothing: {_listed(unused)}")
    return {rule.ours: rule.to_ours([theirs[n] for n in rule.names()], heads) for rule in rules}


def to_theirs(rules: list, ours: dict[str, torch.Tensor], heads: Heads) -> dict[str, torch.Tensor]:
    """Hugging Face's tensors from megaomni's; every rule's tensor must be there, and every tensor
    of ``ours`` taken."""
    if missing := [rule.ours for rule in rules if rule.ours not in ours]:
        raise MappingError(f"the model state lacks {len(missing)} tensors: {_listed(missing)}")
    if unused := set(ours) - {rule.ours for rule in rules}:
        raise MappingError(f"{len(unused)} tensors of the model map to nothing in this family: {_listed(unused)}")
    out = {}
    for rule in rules:
        out.update(zip(rule.names(), rule.to_theirs(ours[rule.ours], heads)))
    return out
