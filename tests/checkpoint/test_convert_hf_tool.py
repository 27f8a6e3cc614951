"""tools/convert_hf.py end to end: a Hugging Face Qwen2 folder imported, verified, exported (bit-exact,
``from_pretrained`` loads it, the folder's other files come back byte for byte), training from
the imported weights equal under TP2 to one process (checkpoints reshard: the import is written
once, for any layout), and the trained checkpoint exported with no more than its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from megaomni.checkpoint.hf.convert import read_hf  # noqa: E402
from megaomni.data.tokenizer import train_tokenizer  # noqa: E402
from tests.conftest import ROOT, read_metrics, run_pretrain  # noqa: E402
from tests.data.helpers import write_shard  # noqa: E402
from tests.parallel.layouts import assert_same_run  # noqa: E402

pytestmark = pytest.mark.slow
TOOL = os.path.join(ROOT, "tools", "convert_hf.py")


def convert(*args: str) -> str:
    proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def text_data(out) -> str:
    """Sums as questions and answers, text only, with a tokenizer of fewer than 256 pieces."""
    members, texts = {}, []
    for i in range(64):
        a, b = i % 7, i % 5
        turns = [{"role": "user", "content": f"What is {a} plus {b}?"}, {"role": "assistant", "content": f"{a + b}"}]
        members[f"t{i:03d}.json"] = json.dumps(turns).encode()
        texts += [t["content"] for t in turns]
    os.makedirs(out, exist_ok=True)
    write_shard(os.path.join(out, "text-00000.tar"), members)
    train_tokenizer(texts, os.path.join(out, "tokenizer"), 120)
    return str(out)


def flatten(tree: dict, prefix: str = "") -> list[str]:
    return [item for key, value in tree.items() for item in
            (flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={json.dumps(value)}"])]


def test_import_verify_export_and_train(tmp_path):
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "chat_template.jinja").write_text("{{ messages }}")

    assert "imported Qwen2ForCausalLM" in convert("import", str(tmp_path / "hf"), str(tmp_path / "mo"))
    difference = float(convert("verify", str(tmp_path / "hf"), str(tmp_path / "mo" / "checkpoint"))
                       .split("largest logit difference: ")[1].split()[0])
    assert difference < 1e-4
    convert("export", str(tmp_path / "mo" / "checkpoint"), str(tmp_path / "back"))
    _, original = read_hf(str(tmp_path / "hf"))
    _, exported = read_hf(str(tmp_path / "back"))
    assert exported.keys() == original.keys() and all(torch.equal(exported[k], original[k]) for k in original)
    assert transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back")).config.model_type == "qwen2"
    for name in ("chat_template.jinja", "generation_config.json"):
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()

    model = flatten(yaml.safe_load((tmp_path / "mo" / "model.yaml").read_text()))
    common = (f"data.path={text_data(tmp_path / 'data')}", *model, f"checkpoint.load={tmp_path / 'mo' / 'checkpoint'}",
              "train.iters=3", "train.warmup_iters=0", "data.global_batch_size=8", "data.seq_length=64")
    runs = {}
    for name, nproc, layout in (("one", 1, ()), ("tp2", 2, ("parallel.tp=2", "checkpoint.save_last=false"))):
        proc = run_pretrain(f"train.output_dir={tmp_path / name}", *common, *layout, nproc=nproc)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = read_metrics(str(tmp_path / name))
    assert_same_run(runs["one"], runs["tp2"], rel=1e-5)

    convert("export", str(tmp_path / "one" / "checkpoints"), str(tmp_path / "trained"))
    trained = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "trained"))
    _, weights = read_hf(str(tmp_path / "trained"))
    assert weights.keys() == original.keys() and not torch.equal(weights["lm_head.weight"], original["lm_head.weight"])
    assert trained.config.model_type == "qwen2"
    assert (tmp_path / "trained" / "chat_template.jinja").read_bytes() == b"{{ messages }}"
