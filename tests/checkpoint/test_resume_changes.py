"""A resume that changes the checkpoint's settings says so: parameter and data changes are one-line
errors (``checkpoint.strict=false``: what fits loads, the log lists the rest), optimizer / schedule
changes are ignored with a warning unless ``checkpoint.reset_schedule=true`` applies them, layout
changes pass. In process, on ``saved`` (tests/checkpoint/conftest.py: the tiny model after 2 steps).
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch

from megaomni.checkpoint.changes import check_resumed_config, keeps_data_position, resumed_config
from megaomni.checkpoint.check import load_common, saved_shapes
from megaomni.config import ConfigError
from tests.checkpoint.conftest import NEWEST
from tests.models.test_parts import VOCAB
from tests.training.steps import PAD_IDS, params, small_state

CPU = torch.device("cpu")


@pytest.fixture
def common(saved) -> dict:
    return load_common(os.path.join(saved, NEWEST))


def _run_config(saved: str, *changes: tuple[str, object]):
    """The saved run's config, resuming from ``saved``, with ``changes`` (dotted field, value)."""
    cfg, _ = small_state()
    cfg.checkpoint.load = saved
    for key, value in changes:
        *path, name = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        setattr(node, name, value)
    return cfg


def _built(cfg):
    from megaomni.training.setup import build_training_state

    torch.manual_seed(5)
    return build_training_state(cfg, VOCAB, PAD_IDS.__getitem__, CPU)


@pytest.mark.parametrize("changes, message", [
    ((("model.llm.num_layers", 3),), "parameters: model.llm.num_layers 2 -> 3"),
    ((("model.vision.enabled", False),), "parameters: model.vision.enabled True -> False"),
    ((("model.llm.moe.num_experts", 4), ("model.audio.ffn_hidden_size", 32)),
     "parameters: model.llm.moe.num_experts 0 -> 4, model.audio.ffn_hidden_size 24 -> 32"),
    ((("data.seed", 7), ("data.global_batch_size", 32)),
     "data: data.global_batch_size 16 -> 32, data.seed 1234 -> 7"),
    ((("model.llm.num_layers", 3), ("data.seq_length", 128)),
     "parameters: model.llm.num_layers 2 -> 3; its data: data.seq_length 256 -> 128"),
])
def test_parameter_and_data_changes_are_one_line_errors(saved, common, changes, message):
    cfg = _run_config(saved, *changes)
    with pytest.raises(ConfigError) as err:
        check_resumed_config(cfg, common, (VOCAB, VOCAB))
    assert str(err.value) == (f"checkpoint.load={saved}: this run changes the checkpoint's {message}; resume with the "
                              "saved settings, or set checkpoint.strict=false to load what fits (the log lists the "
                              "rest)")
    cfg.checkpoint.strict = False
    check_resumed_config(cfg, common, (VOCAB, VOCAB))


def test_another_tokenizer_is_a_parameter_change(saved, toy_data):
    """Through the validation a run does: the toy data's tokenizer has more ids than the checkpoint's rows."""
    from megaomni.validation import check_resume

    cfg = _run_config(saved, ("data.path", toy_data))
    with pytest.raises(ConfigError, match=rf"changes the checkpoint's parameters: vocab {VOCAB} -> \d+; its data: "
                                          rf"data.path '' -> '{toy_data}'; resume with"):
        check_resume(cfg, 1)


def test_what_may_change(saved, common, caplog):
    # The layout and how samples are decoded; and, for weights alone, the data.
    check_resumed_config(_run_config(saved, ("parallel.tp", 2), ("pipeline.schedule", "joint"), ("data.workers", 2),
                                     ("model.llm.rotary_base", 20000)), common, (VOCAB, VOCAB))
    finetune = _run_config(saved, ("checkpoint.finetune", True), ("data.seed", 7))
    check_resumed_config(finetune, common, (VOCAB, VOCAB))
    finetune.model.llm.num_layers = 3
    with pytest.raises(ConfigError, match="changes the checkpoint's parameters: model.llm.num_layers 2 -> 3; resume"):
        check_resumed_config(finetune, common, (VOCAB, VOCAB))
    # Data changed under strict=false: the saved position is not used.
    with caplog.at_level(logging.WARNING, logger="megaomni.checkpoint"):
        assert keeps_data_position(_run_config(saved), common)
        assert not keeps_data_position(_run_config(saved, ("checkpoint.strict", False), ("data.seed", 7)), common)
    assert _logged(caplog) == ["checkpoint.strict=false: the data starts afresh (data settings changed: data.seed "
                               "1234 -> 7)"]


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "megaomni.checkpoint"]


def _cosine(lr: float, min_lr: float, step: int, steps: int) -> float:
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * step / steps))


@pytest.mark.parametrize("reset", [False, True])
def test_changed_schedule_settings_are_ignored_unless_reset(saved, common, caplog, reset):
    from megaomni.checkpoint.dist_ckpt import load_checkpoint

    cfg = _run_config(saved, ("train.lr", 5e-3), ("train.iters", 8), ("train.adam_beta2", 0.99),
                      ("checkpoint.reset_schedule", reset))
    with caplog.at_level(logging.INFO, logger="megaomni.checkpoint"):
        resumed = resumed_config(cfg, common)
    changed = "train.iters 4 -> 8, train.lr 0.01 -> 0.005, train.adam_beta2 0.95 -> 0.99"
    assert _logged(caplog) == [
        f"checkpoint.reset_schedule=true: the optimizer and LR schedule go on from the saved step with {changed}"
        if reset else "resuming the checkpoint's optimizer and LR schedule; ignored (checkpoint.reset_schedule=true "
        f"applies them): {changed} (the run still ends at train.iters, the schedule keeps the checkpoint's length)"]
    assert resumed.train.iters == 8 and (resumed.train.lr, resumed.train.adam_beta2) == ((5e-3, 0.99) if reset
                                                                                        else (1e-2, 0.95))
    state = _built(resumed)
    assert load_checkpoint(saved, state.chunks, state.optimizer, state.scheduler,
                           reset_schedule=reset)["iteration"] == 2
    group = state.optimizer.param_groups[0]
    # The rate of the third step: this run's schedule from step 2, or the checkpoint's (1e-2 over 4 steps).
    assert group["lr"] == pytest.approx(_cosine(5e-3, 1e-3, 2, 8) if reset else _cosine(1e-2, 1e-3, 2, 4))
    assert group["betas"] == ((0.9, 0.99) if reset else (0.9, 0.95))


def test_strict_false_loads_what_fits_and_lists_the_rest(saved, caplog):
    from megaomni.checkpoint.dist_ckpt import load_checkpoint, load_weights

    saved_weights = _built(_run_config(saved))
    load_weights(saved, saved_weights.chunks)
    cfg = _run_config(saved, ("checkpoint.strict", False), ("model.vision.enabled", False),
                      ("model.audio.ffn_hidden_size", 32))
    state = _built(cfg)
    initial = {n: p.detach().clone() for n, p in params(state).items()}
    with caplog.at_level(logging.WARNING, logger="megaomni.checkpoint"):
        load_checkpoint(saved, state.chunks, state.optimizer, state.scheduler, strict=False)
    mlp = [f"audio_encoder.blocks.layers.mlp.linear_fc{i}.weight" for i in (1, 2)]
    # By the checkpoint's keys (one per stacked encoder weight, all layers in it).
    vision = [k for k in saved_shapes(os.path.join(saved, NEWEST)) if k.startswith("vision_encoder.")
              and "_extra_state" not in k]
    assert _logged(caplog) == [
        f"checkpoint.strict=false: 2 weights left at their initial values (absent from the checkpoint or of another "
        f"shape): {', '.join(mlp)}",
        f"checkpoint.strict=false: {len(vision) + 2} weights of the checkpoint not loaded (absent from this model or "
        f"of another shape): {', '.join(sorted(mlp + vision))}"]
    expected = params(saved_weights)
    for name, value in params(state).items():
        left = name.startswith("audio_encoder.blocks.layers.") and ".mlp.linear_fc" in name
        assert torch.equal(value, initial[name] if left else expected[name]), name
