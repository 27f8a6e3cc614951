"""The modalities megaomni knows, in a fixed order: vision, audio, then any registered later.

Registration order is the order of everything per modality: special tokens, encoders (their
parameters draw their initial values in this order), media in a micro-batch, costs."""

from __future__ import annotations

import dataclasses

from megaomni.config import ModelConfig, register_section
from megaomni.media.audio import AUDIO_MODALITY
from megaomni.media.modality import Modality, Source
from megaomni.media.vision import VISION

_MODALITIES: dict[str, Modality] = {m.name: m for m in (VISION, AUDIO_MODALITY)}
_BUILT_IN = {f.name for f in dataclasses.fields(ModelConfig)}


def register(modality: Modality) -> None:
    """Add a modality (its config section ``model.<name>`` too). A name already taken is refused."""
    if modality.name in _MODALITIES or modality.name in _BUILT_IN:
        raise ValueError(f"modality {modality.name!r} exists already")
    _MODALITIES[modality.name] = modality
    register_section(modality.name, modality.section)


def unregister(name: str) -> None:
    """Remove a modality added by :func:`register`."""
    if name in _BUILT_IN or name not in _MODALITIES:
        raise ValueError(f"modality {name!r} was not registered")
    del _MODALITIES[name]
    register_section(name, None)


def modalities() -> list[Modality]:
    return list(_MODALITIES.values())


def get(name: str) -> Modality:
    return _MODALITIES[name]


def enabled(model_cfg) -> list[Modality]:
    """The modalities whose ``model.<name>.enabled`` is set."""
    return [m for m in _MODALITIES.values() if m.enabled(model_cfg)]


def sources() -> list[tuple[Modality, Source]]:
    """Every modality's sources, in order."""
    return [(m, s) for m in _MODALITIES.values() for s in m.sources]
