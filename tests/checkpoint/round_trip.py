"""The two ends of the Hugging Face tests: the random model saved with biases and norms moved off
their initial 0 / 1 (so that a wrong map shows), and megaomni's model written back as the folder
it was imported from (``tmp_path / "hf"``), every tensor bit-exact, then loaded by
``from_pretrained``."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf.convert import Imported, export_hf, read_hf


def save_perturbed(model: torch.nn.Module, folder, norms: tuple[str, ...] = ("norm",)) -> None:
    """Add noise to every bias and every tensor whose name holds one of ``norms``, then save."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or any(n in name for n in norms):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)


def export_and_reload(model_cfg, model: torch.nn.Module, imported: Imported, tmp_path, hf_class) -> torch.nn.Module:
    export_hf(model_cfg, model.state_dict(), str(tmp_path / "out"), imported.architecture, imported.hf_config)
    _, original = read_hf(str(tmp_path / "hf"))
    _, exported = read_hf(str(tmp_path / "out"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    return hf_class.from_pretrained(str(tmp_path / "out")).float().eval()
