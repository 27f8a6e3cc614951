"""The Hugging Face model families megaomni converts, by ``config.json`` ``architectures``."""

from __future__ import annotations

from megaomni.checkpoint.hf import qwen2
from megaomni.checkpoint.hf.mapping import MappingError

FAMILIES = {architecture: qwen2 for architecture in qwen2.ARCHITECTURES}


def family(hf_config: dict):
    """The family module of ``hf_config`` (its first architecture)."""
    architectures = hf_config.get("architectures") or ["(none)"]
    if architectures[0] not in FAMILIES:
        raise MappingError(f"architecture {architectures[0]}: not supported (supported: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[architectures[0]]
