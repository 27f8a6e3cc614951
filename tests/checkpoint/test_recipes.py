"""The recipes that start from Hugging Face weights hold the model the import writes for their
checkpoint (examples/hf/ keeps the public config.json), and they pass validation."""

from __future__ import annotations

import json
import os

from megaomni.checkpoint.hf.convert import model_config
from megaomni.checkpoint.hf.families import family
from megaomni.config import load_config
from megaomni.validation import check_model
from tests.conftest import ROOT


def test_qwen2_vl_2b_sft_recipe_is_the_import():
    with open(os.path.join(ROOT, "examples", "hf", "qwen2_vl_2b_instruct_config.json")) as f:
        hf = json.load(f)
    cfg = load_config(os.path.join(ROOT, "examples", "configs", "qwen2_vl_2b_sft.yaml"))
    imported = model_config(family(hf).model_fields(hf))
    assert cfg.model.llm == imported.llm and cfg.model.vision == imported.vision
    assert not cfg.model.audio.enabled and not imported.audio.enabled
    check_model(cfg)
