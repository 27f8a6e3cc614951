"""Hugging Face checkpoint folders (``config.json`` + safetensors) to megaomni's state dict and
back, through the family's table (megaomni.checkpoint.hf.families)."""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch

from megaomni.checkpoint.hf.families import family
from megaomni.checkpoint.hf.mapping import MappingError, expand, to_ours, to_theirs
from megaomni.config import ModelConfig, config_from_dict, merge_trees
from megaomni.models.build import padded_vocab_size

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_hf(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``config.json`` and every tensor of the folder's safetensors (one file, or shards by index)."""
    from safetensors.torch import load_file

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise MappingError(f"{folder}: no config.json (a Hugging Face model folder has one)")
    with open(path) as f:
        config = json.load(f)
    if os.path.isfile(os.path.join(folder, INDEX)):
        with open(os.path.join(folder, INDEX)) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, SINGLE)):
        files = [SINGLE]
    else:
        raise MappingError(f"{folder}: neither {SINGLE} nor {INDEX}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        if not os.path.isfile(os.path.join(folder, name)):
            raise MappingError(f"{folder}: shard {name} (listed in {INDEX}) is missing")
        tensors.update(load_file(os.path.join(folder, name)))
    return config, tensors


# The files of a model folder besides its weights and config.json that serving needs: tokenizer,
# chat template, processor and generation settings. Import keeps them, export writes them back.
TOKENIZER_FILES = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
                   "chat_template*", "*preprocessor_config.json", "processor_config.json", "generation_config.json",
                   "*.tiktoken")


def read_tokenizer_files(folder: str) -> dict[str, bytes]:
    """``folder``'s :data:`TOKENIZER_FILES`, by name."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
                   and any(fnmatch.fnmatch(n, pattern) for pattern in TOKENIZER_FILES))
    files = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return files


def write_hf(folder: str, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, SINGLE), metadata={"format": "pt"})


def _counts(model: ModelConfig) -> dict[str, int]:
    """What the tables' ``{x}`` run over: the LLM's layers and experts, each encoder's layers."""
    return {"i": model.llm.num_layers, "e": model.llm.moe.num_experts, "v": model.vision.num_layers,
            "a": model.audio.num_layers}


def model_config(sections: dict) -> ModelConfig:
    """A ModelConfig of :func:`import_hf`'s sections."""
    return config_from_dict({"model": sections}).model


@dataclass
class Imported:
    """A Hugging Face folder in megaomni's terms."""

    architecture: str
    sections: dict  # the ``model`` config sections (``model.llm``, ``model.vision``, ... fields)
    state: dict[str, torch.Tensor]  # megaomni's state dict of the whole model
    hf_config: dict  # its config.json, for export to keep what megaomni has no field for (token ids...)


PREPROCESSOR = "preprocessor_config.json"


def processor_fields(preprocessor: dict) -> dict:
    """``model.vision`` fields an image processor's settings (``preprocessor_config.json``) fix:
    its normalisation, where it differs from the family's default."""
    return {field: [float(v) for v in preprocessor[field]] for field in ("image_mean", "image_std")
            if field in preprocessor}


def import_hf(folder: str) -> Imported:
    config, theirs = read_hf(folder)
    fam = family(config)
    if hasattr(fam, "checkpoint_names"):  # a family whose checkpoints come in several layouts: one of them
        theirs = fam.checkpoint_names(theirs)
    sections = fam.model_fields(config)
    if sections["vision"].get("enabled", True) and os.path.isfile(os.path.join(folder, PREPROCESSOR)):
        with open(os.path.join(folder, PREPROCESSOR)) as f:
            sections["vision"].update(processor_fields(json.load(f)))
    vocab = sections["llm"]["vocab_size"]
    if padded_vocab_size(vocab, vocab) != vocab:
        raise MappingError(f"vocab_size={vocab}: megaomni pads the vocabulary to {padded_vocab_size(vocab, vocab)} "
                           "rows; padding an imported one is not supported yet")
    model = model_config(sections)
    ours = to_ours(expand(fam.rules(model), _counts(model)), theirs)
    # megaomni keeps fp32 weights (bf16 training casts them): bf16 -> fp32 -> bf16 is exact.
    return Imported(config["architectures"][0], sections, {name: t.float() for name, t in ours.items()}, config)


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``state`` (every tensor of ``module``, as :func:`import_hf` gives them) into ``module``,
    strictly; megatron-core's ``_extra_state`` entries, which a checkpoint of tensors lacks, stay."""
    extra = {k: v for k, v in module.state_dict().items() if k.endswith("_extra_state")}
    module.load_state_dict({**state, **extra}, strict=True)


def export_hf(model: ModelConfig, state: dict[str, torch.Tensor], folder: str, architecture: str,
              base_config: Optional[dict] = None, files: Optional[dict[str, bytes]] = None) -> None:
    """Write megaomni's ``state`` (of a model of ``model``; a module's ``state_dict``, its
    ``_extra_state`` entries aside) as a Hugging Face ``architecture`` folder; its config.json is
    ``base_config`` (the imported one) updated with every field megaomni's config sets, beside
    ``files`` (the imported tokenizer and processor files, :func:`read_tokenizer_files`)."""
    fam = family({"architectures": [architecture]})
    tensors = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    theirs = to_theirs(expand(fam.rules(model), _counts(model)), tensors)
    write_hf(folder, merge_trees(base_config or {}, fam.hf_config(model, architecture)), theirs)
    for name, data in (files or {}).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
