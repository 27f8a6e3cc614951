"""megaomni.training.ddp: the gradient hook through megaomni.ops.grad_accumulate gives a training
step's gradients bit-equal to megatron-core's own DDP hook's."""

from __future__ import annotations

import torch

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
