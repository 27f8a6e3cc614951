"""megaomni.training.ddp: the gradient hook through megaomni.ops.grad_accumulate, and the MoE
experts' grouped backward adding into main_grad itself, give a training step's gradients
bit-equal to megatron-core's own DDP hook's."""

from __future__ import annotations

import torch

from megaomni.config import MoEConfig
from megaomni.ops import grouped_gemm
from megaomni.training import ddp as omni_ddp
from megaomni.training import setup as training_setup
from tests.training import steps


def test_ddp_hook_step_equals_megatron_core_hook(megatron_cpu, monkeypatch):
    """A step of two micro-batches: every gradient goes through the accumulate once per micro-batch
    in which it has one, and the main_grads are megatron-core's hook's, bit for bit."""
    calls = []
    original = omni_ddp.accumulate
    monkeypatch.setattr(omni_ddp, "accumulate", lambda main, grad: calls.append(main.numel()) or original(main, grad))
    cfg, state = steps.small_state()
    batches = [steps.micro_batch(cfg, 1), steps.micro_batch(cfg, 2, ("vision",))]
    loss, norm, grads = steps.step(cfg, state, batches)
    trained = [p for p in steps.params(state).values() if p.requires_grad]
    audio = [p for n, p in steps.params(state).items() if p.requires_grad and n.startswith("audio")]
    assert len(calls) == 2 * len(trained) - len(audio), (len(calls), len(trained), len(audio))

    monkeypatch.setattr(training_setup, "OmniDDP", omni_ddp.DistributedDataParallel)
    cfg, state = steps.small_state()
    assert type(state.ddp[0]) is omni_ddp.DistributedDataParallel
    ref_loss, ref_norm, ref_grads = steps.step(cfg, state, batches)
    assert loss == ref_loss and norm == ref_norm
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name


def test_grouped_experts_add_their_gradients_in_backward(megatron_cpu, monkeypatch):
    """An MoE LLM on torch._grouped_mm: the experts' weight gradients reach main_grad through one
    grouped add per expert linear and micro-batch, not the hook; the rest through the hook; all
    bit-equal to megatron-core's DDP, whose hook takes every gradient."""
    moe = MoEConfig(num_experts=4, top_k=2, ffn_hidden_size=48, grouped_gemm="torch")
    hooked, grouped = [], []
    original_one, original_many = omni_ddp.accumulate, grouped_gemm.accumulate_groups
    monkeypatch.setattr(omni_ddp, "accumulate", lambda main, grad: hooked.append(main) or original_one(main, grad))
    monkeypatch.setattr(grouped_gemm, "accumulate_groups",
                        lambda mains, grads: grouped.append(len(mains)) or original_many(mains, grads))
    cfg, state = steps.small_state(moe=moe)
    # The trainer packed each linear's expert weights back to back: the grouped GEMM reads them in place.
    experts = state.chunks[0].llm.decoder.layers[0].mlp.experts.local_experts
    fc1 = [e.linear_fc1.weight for e in experts]
    assert grouped_gemm.stacked(fc1).untyped_storage().data_ptr() == fc1[0].untyped_storage().data_ptr()
    batches = [steps.micro_batch(cfg, 1), steps.micro_batch(cfg, 2, ("vision",))]
    loss, norm, grads = steps.step(cfg, state, batches)
    named = {n: p for n, p in steps.params(state).items() if p.requires_grad}
    experts = {n for n in named if ".local_experts." in n}
    assert len(experts) == 2 * 4 * cfg.model.llm.num_layers
    # Two linears a layer, two micro-batches; no expert gradient went through the hook.
    assert grouped == [4] * (2 * cfg.model.llm.num_layers * 2)
    assert not {id(named[n].main_grad) for n in experts} & {id(m) for m in hooked}
    assert len(hooked) == 2 * (len(named) - len(experts)) - sum(n.startswith("audio") for n in named)

    monkeypatch.setattr(training_setup, "OmniDDP", omni_ddp.DistributedDataParallel)
    cfg, state = steps.small_state(moe=moe)
    ref_loss, ref_norm, ref_grads = steps.step(cfg, state, batches)
    assert loss == ref_loss and norm == ref_norm
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert torch.equal(grads[name], ref_grads[name]), name
