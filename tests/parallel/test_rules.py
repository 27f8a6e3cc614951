"""Combination rules of the parallel layout: a bad layout fails before anything is built, with
one line naming the field and the rule; every tested layout passes."""

from __future__ import annotations

import pytest

from megaomni.config import ConfigError
from megaomni.parallel.layout import llm_parallel_fields
from megaomni.validation import validate
from tests.parallel.layouts import COMMON, LAYOUTS
from tests.test_config import _valid_cfg

MOE = ("model.llm.moe.num_experts=4",)


@pytest.mark.parametrize("overrides, world, expected", [
    (["parallel.vpp=2"], 1, "parallel.vpp=2: virtual pipeline stages need parallel.pp > 1"),
    (["parallel.pp=2", "parallel.vpp=2"], 2, "model.llm.num_layers=2: fewer than the parallel.pp*vpp=4"),
    (["parallel.pp=2", "pipeline.layers_per_stage=[2]"], 2, "pipeline.layers_per_stage=[2]: needs parallel.pp*vpp=2"),
    (["parallel.pp=2", "pipeline.layers_per_stage=[1,2]"], 2, "pipeline.layers_per_stage=[1, 2]: sums to 3"),
    (["parallel.pp=2", "pipeline.layers_per_stage=[2,0]"], 2, "pipeline.layers_per_stage=[2, 0]: every stage"),
    (["parallel.pp=2", "parallel.vpp=2", "model.llm.num_layers=4", "data.global_batch_size=8", "data.packing=false"],
     2, "data.global_batch_size=8: the interleaved pipeline schedule needs >= parallel.pp=2 micro-batches"),
    (["parallel.pp=2", "parallel.vpp=2", "model.llm.num_layers=4", "data.global_batch_size=1"], 2,
     "data.global_batch_size=1: must be >= 2 (data-parallel ranks 1 x 2 micro-batches each)"),
    (["data.global_batch_size=1"], 2, "data.global_batch_size=1: must be >= 2 (data-parallel ranks 2 x 1"),
    (["data.max_tokens=128"], 1, "data.max_tokens=128: must be >= data.seq_length=256"),
    (["parallel.cp=2", "data.max_tokens=258"], 2, "data.max_tokens=258: must be a multiple of 4"),
    (["data.packing=false", "data.global_batch_tokens=1000"], 1, "data.global_batch_tokens=1000: dynamic batches"),
    # The toy data at DP2 would otherwise take more samples a step than at DP1 (a step for each rank).
    (["data.global_batch_tokens=300"], 2, "data.global_batch_tokens=300: must be >= 512 (data-parallel ranks 2 x 1"),
    (["data.max_patches=-1"], 1, "data.max_patches=-1: must be >= 0"),
    (["parallel.ep=2", *MOE], 2, "data.micro_batch_multiple=1: must be a multiple of the data-parallel size 2"),
    (["parallel.cp=2", "data.seq_length=254"], 2, "data.seq_length=254: must be a multiple of 4"),
    (["parallel.cp=2", "parallel.tp=2", "parallel.sp=true", "data.seq_length=252"], 4,
     "data.seq_length=252: must be a multiple of 8"),
    (["parallel.sp=true"], 1, "parallel.sp=true: sequence parallelism splits activations"),
    (["parallel.tp=2", "model.llm.ffn_hidden_size=175"], 2, "parallel.tp=2: must divide model.llm.ffn_hidden_size=175"),
    (["parallel.tp=4", "model.llm.num_query_groups=2"], 4, "parallel.tp=4: must divide model.llm.num_query_groups=2"),
    (["parallel.encoder.tp=2"], 2, "parallel.encoder.tp=2: must be 1"),
    (["parallel.ep=2"], 2, "parallel.ep=2: expert parallelism needs an MoE LLM"),
    (["parallel.ep=3", *MOE], 3, "parallel.ep=3: must divide model.llm.moe.num_experts=4"),
    (["parallel.tp=2", *MOE], 2, "parallel.sp=false: an MoE LLM with parallel.tp=2 needs parallel.sp=true"),
    (["parallel.ep=4", "parallel.pp=2", *MOE, "data.global_batch_size=32"], 4,
     "parallel.ep=4: ep*tp=4 must divide the ranks of a pipeline stage, world/pp=2"),
    (["model.llm.moe.top_k=5", *MOE], 1, "model.llm.moe.top_k=5: must be in [1, num_experts=4]"),
    (["model.llm.moe.balancing=loss", *MOE], 1, "model.llm.moe.balancing='loss': valid"),
    (["model.llm.moe.grouped_gemm=cutlass", *MOE], 1,
     "model.llm.moe.grouped_gemm='cutlass': valid: auto, cuda, torch, loop"),
    (["parallel.tp=2", "parallel.pp=2"], 2, "parallel.tp*pp*cp=4: must divide the world size 2"),
])
def test_bad_layouts_fail_with_one_line(tmp_path, overrides, world, expected):
    cfg = _valid_cfg(tmp_path, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg, world)
    message = str(err.value)
    assert message.startswith(expected), message
    assert "\n" not in message


@pytest.mark.parametrize("name, nproc, overrides, models",
                         LAYOUTS, ids=[layout[0] for layout in LAYOUTS])
def test_tested_layouts_are_valid(tmp_path, name, nproc, overrides, models):
    for model in models:
        validate(_valid_cfg(tmp_path, *COMMON, *model.overrides, *overrides), nproc)


def test_interleaved_schedule_never_batches_p2p(tmp_path):
    """megatron-core's interleaved schedule with batched p2p on 2 stages gives wrong numbers
    silently (NVIDIA/Megatron-LM #750, #1450): the layout must never ask for it."""
    for pp in (2, 4):
        cfg = _valid_cfg(tmp_path, *COMMON, f"parallel.pp={pp}", "parallel.vpp=2")
        fields = llm_parallel_fields(cfg, vocab_size=128)
        assert fields["virtual_pipeline_model_parallel_size"] == 2
        assert fields["batch_p2p_comm"] is False
