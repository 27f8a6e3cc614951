"""``tools/convert_hf.py import --tp/--pp/...``: the checkpoint is the same for every layout (it
reshards on load), the layout goes into the recipe it writes, checked against the model first:
a layout the model cannot take is one line and exit 2, nothing written."""

from __future__ import annotations

import pytest
import yaml

transformers = pytest.importorskip("transformers")

from tests.checkpoint.test_convert_hf_verify import convert_hf, qwen2  # noqa: E402


def test_import_writes_the_layout_into_the_recipe_and_refuses_one_that_does_not_fit(tmp_path, capsys):
    qwen2(tmp_path / "hf")  # 4 heads, 2 query groups, 2 layers
    capsys.readouterr()  # save_pretrained's progress
    assert convert_hf.main(["import", str(tmp_path / "hf"), str(tmp_path / "bad"), "--tp", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "convert_hf: parallel.tp=4: must divide model.llm.num_query_groups=2 (valid: 1, 2)"
    assert not (tmp_path / "bad").exists()
    assert convert_hf.main(["import", str(tmp_path / "hf"), str(tmp_path / "mo"), "--tp", "2", "--pp", "2"]) == 0
    recipe = yaml.safe_load((tmp_path / "mo" / "model.yaml").read_text())
    assert recipe["parallel"] == {"tp": 2, "pp": 2} and recipe["model"]["llm"]["num_layers"] == 2
