"""benchmarks/plain_model.py against megaomni's model, and benchmarks/plain_omni.py on the CPU.

The plain model must be the model megaomni builds (same parameters, hence the same FLOPs): for
each recipe shape, every part (LLM embedding, decoder, output layer, vision encoder, projector)
holds parameters of exactly the same shapes as megaomni.models.build's; and given megaomni's
weights (its state dict loads as it is) it computes the same per-token loss on a toy batch, in
float64, within ``RTOL`` of the largest loss (megatron-core and megaomni compute rotary angles
in float32: tests/models/test_parts.py's tolerance; measured 5e-8 relative). Then two training
steps on the toy data run with finite losses, and omni_bench.py's baseline row comes back.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import pytest
import torch

from megaomni.config import load_config
from megaomni.models.freeze import _leaf, leaf_prefixes
from tests.conftest import ROOT, TINY_CONFIG, load_script
from tests.models.test_parts import RTOL, randomize_

VOCAB = 256
PADS = {"vision": (5, 6)}
VL_2B = os.path.join(ROOT, "examples", "configs", "vl_2b.yaml")
# vl_2b's architecture (LayerNorm, biases, QuickGELU, merger width, temporal patches, M-RoPE, QKV
# bias, tied embeddings), narrowed to run in a test.
SMALL_VL = ["model.llm.num_layers=2", "model.llm.hidden_size=64", "model.llm.num_attention_heads=4",
            "model.llm.num_query_groups=2", "model.llm.ffn_hidden_size=96", "model.llm.mrope_section=[4,2,2]",
            "model.vision.num_layers=2", "model.vision.hidden_size=32", "model.vision.num_attention_heads=2",
            "model.vision.ffn_hidden_size=64", "model.vision.projector_hidden_size=128"]
# Toy data (tools/make_toy_data.py) through the vl recipe: its small images within the budgets.
VL_TOY_DATA = ["data.seq_length=256", "data.max_tokens=256", "data.max_patches=4096", "data.max_pixels=200000",
               "data.global_batch_size=4", "data.workers=0"]
CASES = {
    "tiny_omni": (TINY_CONFIG, ["model.audio.enabled=false"]),
    "tiny_qk_norm_untied": (TINY_CONFIG, ["model.audio.enabled=false", "model.llm.qk_norm=true",
                                          "model.llm.qkv_bias=true"]),
    "vl_2b_small": (VL_2B, SMALL_VL),
}


@pytest.fixture(scope="module")
def plain_model():
    return load_script("benchmarks/plain_model.py")  # registered as plain_model, which plain_omni imports


@pytest.fixture(scope="module")
def plain_omni(plain_model):
    load_script("benchmarks/report.py")  # plain_omni imports it by name
    return load_script("benchmarks/plain_omni.py")


def part_shapes(model: torch.nn.Module, cfg) -> dict[str, Counter]:
    """megaomni.models.freeze's part of every parameter -> the multiset of its parameters' shapes."""
    prefixes, parts = leaf_prefixes(cfg.model), {}
    for name, p in model.named_parameters():
        parts.setdefault(_leaf(name, prefixes), Counter())[tuple(p.shape)] += 1
    return parts


@pytest.mark.parametrize("case", list(CASES))
def test_same_parameters_as_megaomni(megatron_cpu, plain_model, case):
    from megaomni.models.build import build_model

    path, overrides = CASES[case]
    cfg = load_config(path, overrides)
    theirs = build_model(cfg, VOCAB, PADS.__getitem__)
    ours = plain_model.PlainOmni(cfg.model, VOCAB, PADS["vision"])
    assert part_shapes(ours, cfg) == part_shapes(theirs, cfg)
    assert plain_model.parameter_count(ours) == plain_model.parameter_count(theirs)


@pytest.mark.parametrize("case", ["tiny_omni", "vl_2b_small"])
def test_same_loss_as_megaomni(megatron_cpu, plain_model, toy_data, case):
    from megaomni.data.loader import OmniDataLoader
    from megaomni.data.tokenizer import load_tokenizer
    from megaomni.models.build import build_model, padded_vocab_size

    path, overrides = CASES[case]
    cfg = load_config(path, [*overrides, *(VL_TOY_DATA if path == VL_2B else []), f"data.path={toy_data}",
                             "train.device=cpu", "train.bf16=false"])
    tokenizer = load_tokenizer(cfg.data.tokenizer_path())
    vocab = padded_vocab_size(tokenizer.vocab_size, 0)
    theirs = build_model(cfg, vocab, tokenizer.media_pad_ids)
    randomize_(theirs)  # weights large enough that attention, positions and the merge matter
    theirs.double()
    ours = plain_model.PlainOmni(cfg.model, vocab, tokenizer.media_pad_ids("vision")).double()
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not result.missing_keys and all(k.endswith("._extra_state") for k in result.unexpected_keys), result
    loader = OmniDataLoader(cfg, tokenizer, dp_rank=0, dp_size=1)
    batch = loader.next_step()[0]
    loader.close()
    assert batch.media["vision"].values.shape[0] > 0
    expected = theirs(batch.tokens, batch.position_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens,
                      media=batch.media).reshape(-1).detach()
    mask = batch.loss_mask.reshape(-1).bool()
    actual = ours(batch)[mask].detach()
    torch.testing.assert_close(actual, expected[mask], rtol=RTOL, atol=RTOL * float(expected[mask].abs().max()))


def test_two_steps_on_cpu(plain_omni, toy_data, tmp_path):
    from megaomni.data.tokenizer import load_tokenizer
    from megaomni.models.build import padded_vocab_size

    vocab = padded_vocab_size(load_tokenizer(os.path.join(toy_data, "tokenizer.model")).vocab_size, 0)
    row = plain_omni.main(["--config", TINY_CONFIG, "--iters", "2", "--skip", "1", "--json", str(tmp_path / "row.json"),
                      "model.audio.enabled=false", f"data.path={toy_data}", "train.device=cpu",
                            "train.warmup_iters=1", "logging.profile_start=2", f"train.output_dir={tmp_path}"])
    assert len(row["losses"]) == 2 and all(math.isfinite(x) for x in row["losses"])
    # Untrained (init std 0.02): near the uniform guess, ln(vocab), as megaomni's toy run starts.
    assert abs(row["losses"][0] - math.log(vocab)) < 0.5, (row["losses"], math.log(vocab))
    assert row["tokens_per_s"] > 0 and row["iterations"] == 1 and not row["compile"]
    assert (tmp_path / "row.json").is_file()
    # logging.profile_start profiles the baseline as megaomni's trainer profiles its steps.
    summary = (tmp_path / "profile" / "summary_rank_00000.txt").read_text()
    assert summary.startswith("iterations 2-2:") and "aten::" in summary, summary[:300]


def test_omni_bench_baseline_row(toy_data, tmp_path):
    """omni_bench.py --baseline: plain_omni.py's row from its own process, and each megaomni row's ratio to it."""
    load_script("benchmarks/report.py")  # omni_bench imports it by name
    bench = load_script("benchmarks/omni_bench.py")
    baseline = bench.run_baseline(TINY_CONFIG, ["model.audio.enabled=false", f"data.path={toy_data}",
                                                "train.device=cpu", "train.warmup_iters=1"], 2, 1, str(tmp_path))
    assert baseline["variant"] == "plain_pytorch" and baseline["iterations"] == 1, baseline
    rows = bench.with_ratios([{"variant": "none", "tokens_per_s": 3 * baseline["tokens_per_s"]},
                              {"variant": "oom", "failed": "out of memory"}], baseline)
    assert rows[0]["vs_plain"] == pytest.approx(3.0, rel=1e-12) and "vs_plain" not in rows[1]
