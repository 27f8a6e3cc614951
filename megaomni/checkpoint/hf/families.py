"""The Hugging Face model families megaomni converts, by ``config.json`` ``architectures``."""

from __future__ import annotations

from megaomni.checkpoint.hf import llama_style, llava, qwen2_5_omni, qwen2_5_vl, qwen2_audio, qwen2_vl
from megaomni.checkpoint.hf.mapping import MappingError

FAMILIES = {architecture: module for module in (llama_style, qwen2_vl, qwen2_5_vl, qwen2_audio, qwen2_5_omni, llava)
            for architecture in module.ARCHITECTURES}


def family(hf_config: dict):
    """The family module of ``hf_config`` (its first architecture)."""
    architectures = hf_config.get("architectures") or ["(none)"]
    if architectures[0] not in FAMILIES:
        raise MappingError(f"architecture {architectures[0]}: not supported (supported: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[architectures[0]]
