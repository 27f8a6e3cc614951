"""The export half of the Hugging Face tests: megaomni's model written back as the folder it was
imported from (``tmp_path / "hf"``), every tensor bit-exact, then loaded by ``from_pretrained``."""

from __future__ import annotations

import torch

from megaomni.checkpoint.hf.convert import Imported, export_hf, read_hf


def export_and_reload(model_cfg, model: torch.nn.Module, imported: Imported, tmp_path, hf_class) -> torch.nn.Module:
    export_hf(model_cfg, model.state_dict(), str(tmp_path / "out"), imported.architecture, imported.hf_config)
    _, original = read_hf(str(tmp_path / "hf"))
    _, exported = read_hf(str(tmp_path / "out"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    return hf_class.from_pretrained(str(tmp_path / "out")).float().eval()
