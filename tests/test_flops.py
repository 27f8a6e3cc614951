"""The FLOP model MFU is computed with (megaomni.flops): a hand count, and torch's own count of
megaomni's LLM forward (``torch.utils.flop_counter``)."""

from __future__ import annotations

import torch

from megaomni.config import LLMConfig, ModelConfig, OmniConfig
from megaomni.flops import TRAINING_RATIO, FlopModel
from tests.models.conftest import megatron_cpu  # noqa: F401


def test_hand_count():
    model = ModelConfig(llm=LLMConfig(num_layers=1, hidden_size=8, num_attention_heads=2, num_query_groups=1,
                                      ffn_hidden_size=16))
    model.vision.enabled = model.audio.enabled = False
    flops = FlopModel.from_config(model, vocab=32)
    params = 2 * 8 * 2 * 4 + 2 * 8 * 4 * 1 + 3 * 8 * 16  # q, o; k, v of one group; gate, up, down
    pairs = 3 * 4 / 2 + 5 * 6 / 2  # causal, within each of the two samples
    forward = 2 * params * 8 + 4 * 8 * pairs + 2 * 8 * 32 * 8
    assert flops.training([3, 5], []) == TRAINING_RATIO * forward


def test_matches_torch_flop_counter_on_the_llm(megatron_cpu):
    """torch counts every matmul of the forward (``aten.mm``); it has no count for the CPU's
    attention kernel, so attention is checked by the hand count above."""
    from torch.utils.flop_counter import FlopCounterMode

    from megaomni.models.build import build_model

    cfg = OmniConfig()
    cfg.model.vision.enabled = cfg.model.audio.enabled = False
    llm, vocab, lengths = cfg.model.llm, 128, [5, 11, 16]
    model = build_model(cfg, vocab, lambda name: 0).eval()
    tokens = torch.randint(0, vocab, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(tokens, positions, cu_seqlens=torch.tensor([0, 5, 16, 32], dtype=torch.int32))
    matmuls = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    ours = FlopModel.from_config(cfg.model, vocab).training(lengths, []) / TRAINING_RATIO
    width = llm.num_attention_heads * (llm.hidden_size // llm.num_attention_heads)
    attention = 4 * width * sum(n * (n + 1) / 2 for n in lengths) * llm.num_layers
    assert matmuls == ours - attention
