"""The recipes that start from Hugging Face weights hold the model the import writes for their
checkpoint (examples/hf/ keeps the public config.json and preprocessor_config.json), and they
pass validation; a stage's recipe is its base recipe with the stage's changes."""

from __future__ import annotations

import json
import os

import pytest

from megaomni.checkpoint.hf.convert import model_config, processor_fields
from megaomni.checkpoint.hf.families import family
from megaomni.config import ConfigError, load_config
from megaomni.validation import check_model
from tests.conftest import ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def _imported(config: str, preprocessor: str | None = None):
    with open(os.path.join(EXAMPLES, "hf", config)) as f:
        hf = json.load(f)
    sections = family(hf).model_fields(hf)
    if preprocessor:
        with open(os.path.join(EXAMPLES, "hf", preprocessor)) as f:
            sections["vision"].update(processor_fields(json.load(f)))
    return model_config(sections)


@pytest.mark.parametrize("recipe, config, preprocessor", [
    ("qwen2_vl_2b_sft.yaml", "qwen2_vl_2b_instruct_config.json", None),
    ("llava_1_5_7b_stage1.yaml", "llava_1_5_7b_config.json", "llava_1_5_7b_preprocessor_config.json"),
    ("llava_1_5_7b_stage2.yaml", "llava_1_5_7b_config.json", "llava_1_5_7b_preprocessor_config.json"),
])
def test_recipe_is_the_import(recipe, config, preprocessor):
    cfg = load_config(os.path.join(EXAMPLES, "configs", recipe))
    imported = _imported(config, preprocessor)
    assert cfg.model.llm == imported.llm and cfg.model.vision == imported.vision
    assert not cfg.model.audio.enabled and not imported.audio.enabled
    check_model(cfg)


def test_llava_stage2_is_stage1_with_its_changes():
    one = load_config(os.path.join(EXAMPLES, "configs", "llava_1_5_7b_stage1.yaml")).to_dict()
    two = load_config(os.path.join(EXAMPLES, "configs", "llava_1_5_7b_stage2.yaml")).to_dict()
    changed = {f"{section}.{key}" for section in one for key in one[section] if one[section][key] != two[section][key]}
    assert changed == {"model.freeze", "data.path", "data.global_batch_size", "train.iters", "train.lr",
                       "train.warmup_iters", "train.output_dir", "checkpoint.load", "checkpoint.finetune",
                       "checkpoint.save_interval"}
    assert one["model"]["freeze"] == ["llm", "vision.encoder"] and two["model"]["freeze"] == ["vision.encoder"]


def test_a_base_chain_that_loops_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="its base chain returns to"):
        load_config(str(tmp_path / "a.yaml"))
