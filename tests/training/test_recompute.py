"""``train.recompute``: the validation of its names, and a training step under each mode (full;
selective per module; one stack only) that equals the step without recomputation (megatron-core's
recomputation re-runs the same float operations: equal within float noise), while autograd
keeps fewer tensors for backward."""

from __future__ import annotations

import pytest
import torch

from megaomni.config import ConfigError, load_config
from megaomni.validation import check_model, check_recompute
from tests.models.test_parts import small_config
from tests.training import steps


@pytest.mark.parametrize("overrides, message", [
    (("train.recompute=some",), "train.recompute='some': valid: none, selective, full"),
    (("train.recompute=selective", "train.recompute_modules=[core_attn, attn]"),
     "train.recompute_modules=[core_attn, attn]: unknown module 'attn' (valid: core_attn, mlp, layernorm, moe, "
     "shared_experts)"),
    (("train.recompute=selective", "train.recompute_modules=[]"),
     "train.recompute_modules=[]: selective recomputation needs at least one of core_attn"),
    (("train.recompute=selective", "train.recompute_modules=[moe]"),
     "train.recompute_modules=[moe]: moe and shared_experts need an MoE LLM (model.llm.moe.num_experts)"),
    (("train.recompute=selective", "train.recompute_modules=[layernorm]"),
     "train.recompute_modules=[layernorm]: layernorm recomputation needs Transformer Engine"),
    (("train.recompute=full", "model.audio.enabled=false", "train.recompute_parts=[llm, audio]"),
     "train.recompute_parts=[llm, audio]: unknown stack 'audio' (valid: llm, vision)"),
])
def test_bad_recompute_settings_fail_with_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_model(load_config(None, list(overrides)))
    assert message in str(err.value) and "\n" not in str(err.value)


def _saved_and_step(**train):
    """The tensors autograd keeps through one micro-batch's forward, and a whole step's loss,
    grad norm and gradients."""
    cfg = small_config()
    cfg.train.iters, cfg.train.warmup_iters = 2, 0
    for name, value in train.items():
        setattr(cfg.train, name, value)
    check_recompute(cfg)
    state = steps.training_state(cfg)
    batches = [steps.micro_batch(cfg, 1), steps.micro_batch(cfg, 2, ("vision",))]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        batch = batches[0]
        state.chunks[0](batch.tokens, batch.position_ids, labels=batch.labels, cu_seqlens=batch.cu_seqlens,
                        media=batch.media)
    return sum(saved), steps.step(cfg, state, batches)


@pytest.mark.parametrize("train", [
    dict(recompute="full"),
    dict(recompute="selective", recompute_modules=["core_attn", "mlp"]),
    dict(recompute="full", recompute_parts=["vision"]),
], ids=["full", "selective", "full_vision_only"])
def test_a_step_with_recomputation_equals_one_without(megatron_cpu, train):
    kept, (loss, norm, grads) = _saved_and_step(**train)
    reference_kept, (ref_loss, ref_norm, ref_grads) = _saved_and_step()
    assert kept < reference_kept
    assert loss == pytest.approx(ref_loss, rel=1e-6) and norm == pytest.approx(ref_norm, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
