"""Freezing parts of the omni model (``model.freeze``): the names a recipe gives them, and a
built model chunk made to leave them untrained.

The names, with ``<m>`` each enabled modality (``vision``, ``audio``, registered ones):

- ``llm``: the whole LLM, that is ``llm.embedding`` (the word embeddings), ``llm.decoder`` (the
  transformer layers and the final norm) and ``llm.output`` (the output layer);
- ``<m>``: the whole encoder, that is ``<m>.encoder`` (all of it but the projector: stem or patch
  embedding, transformer blocks) and ``<m>.projector`` (into the LLM's embedding space).

A frozen parameter does not require grad, so megatron-core's DDP gives it no grad buffer (no
gradient all-reduce) and its optimizer no state: no step changes it, weight decay included. An
encoder whose body is frozen runs under ``torch.no_grad()`` (no activations kept for backward),
its projector, when it trains, in the caller's grad mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from megaomni.config import ModelConfig
from megaomni.media import registry

if TYPE_CHECKING:  # validation reads the names without importing the model (and megatron-core)
    from megaomni.models.omni import OmniModel


def leaf_prefixes(model_cfg: ModelConfig) -> dict[str, str]:
    """The parts no name splits further -> the start of their parameters' names in an
    :class:`OmniModel` (a parameter belongs to the longest prefix it starts with)."""
    leaves = {"llm.embedding": "llm.embedding.", "llm.decoder": "llm.decoder.", "llm.output": "llm.output_layer."}
    for modality in registry.enabled(model_cfg):
        encoder = f"{modality.name}_encoder."
        leaves[f"{modality.name}.encoder"] = encoder
        leaves[f"{modality.name}.projector"] = encoder + "projector."
    return leaves


def part_names(model_cfg: ModelConfig) -> dict[str, list[str]]:
    """Every name ``model.freeze`` accepts -> the leaf parts it stands for."""
    leaves = list(leaf_prefixes(model_cfg))
    names: dict[str, list[str]] = {}
    for leaf in leaves:
        group = leaf.partition(".")[0]
        names.setdefault(group, []).append(leaf)
        names[leaf] = [leaf]
    return names


def frozen_leaves(model_cfg: ModelConfig, names: Sequence[str]) -> set[str]:
    """The leaf parts that ``names`` (validated) freeze."""
    table = part_names(model_cfg)
    return {leaf for name in names for leaf in table[name]}


def _leaf(param_name: str, prefixes: dict[str, str]) -> str:
    matches = [leaf for leaf, prefix in prefixes.items() if param_name.startswith(prefix)]
    if not matches:
        raise ValueError(f"parameter {param_name} belongs to no part model.freeze names (megaomni/models/freeze.py)")
    return max(matches, key=lambda leaf: len(prefixes[leaf]))


def freeze(model: OmniModel, names: Sequence[str]) -> None:
    """Leave the parts ``names`` (validated: ``validation.check_freeze``) of ``model``, one
    pipeline chunk, untrained. Before megatron-core's DDP wraps it: DDP reads ``requires_grad``."""
    frozen = frozen_leaves(model.cfg, names)
    prefixes = leaf_prefixes(model.cfg)
    for param_name, param in model.named_parameters():
        if _leaf(param_name, prefixes) in frozen:
            param.requires_grad_(False)
    for name in model.encoder_names:
        if f"{name}.encoder" in frozen:
            encoder = getattr(model, f"{name}_encoder")
            _WithoutGrad(encoder, None if f"{name}.projector" in frozen else encoder.projector)


class _WithoutGrad:
    """Runs an encoder under ``torch.no_grad()``, and its projector (when given; the encoder
    calls it last) in the caller's grad mode. Module hooks, so that every caller gets it: the
    model's own embedding step, and the joint schedule's executor, which calls encoders itself.
    A projector called on its own runs as it would unfrozen."""

    def __init__(self, encoder: nn.Module, projector: nn.Module | None):
        self.outer: list[bool] = []  # the callers' grad modes, while the encoder runs
        encoder.register_forward_pre_hook(self._enter)
        encoder.register_forward_hook(self._leave, always_call=True)  # also when the forward raises
        if projector is not None:
            projector.register_forward_pre_hook(self._resume)
            projector.register_forward_hook(self._pause, always_call=True)

    def _enter(self, *_) -> None:
        self.outer.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def _leave(self, *_) -> None:
        torch.set_grad_enabled(self.outer.pop())

    def _resume(self, *_) -> None:
        if self.outer:
            torch.set_grad_enabled(self.outer[-1])

    def _pause(self, *_) -> None:
        if self.outer:
            torch.set_grad_enabled(False)
