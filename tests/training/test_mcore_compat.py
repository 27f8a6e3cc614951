"""megatron-core's multi-tensor fallbacks replaced by ``torch._foreach_*`` (platform/mcore_compat.py)
give its own values: the clipping norm (float32, within summation-order noise), scaling in place and
into other tensors, and the optimizer's main <-> model copies across dtypes (exact)."""

from __future__ import annotations

import torch
from megatron.core.utils import local_multi_tensor_l2_norm, local_multi_tensor_scale

from megaomni.platform.mcore_compat import foreach_copy, foreach_l2_norm, foreach_scale


def _tensors(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in ((7, 3), (5,), (2, 4, 6), (1,))]


def test_foreach_norm_equals_megatron_cores_fallback(monkeypatch):
    grads = _tensors(0)
    # The fallback hands its result to CUDA; keep it on the CPU to compare.
    monkeypatch.setattr(torch, "tensor", lambda data, **kw: torch.as_tensor(data, dtype=kw.get("dtype")))
    reference, _ = local_multi_tensor_l2_norm(0, None, [grads], False)
    monkeypatch.undo()
    norm, _ = foreach_l2_norm(0, None, [grads], False)
    exact = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads]))
    assert norm.shape == (1,) and norm.dtype == torch.float32
    assert abs(norm.item() - reference.item()) <= 1e-6 * exact.item()
    assert abs(norm.item() - exact.item()) <= 1e-6 * exact.item()


def test_foreach_scale_and_copy_equal_the_loops():
    grads, reference = _tensors(1), _tensors(1)
    foreach_scale(0, None, [grads, grads], 0.25)
    local_multi_tensor_scale(0, None, [reference, reference], 0.25)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference))
    targets, expected = [torch.empty_like(t) for t in grads], [torch.empty_like(t) for t in grads]
    foreach_scale(0, None, [grads, targets], 3.0)
    local_multi_tensor_scale(0, None, [grads, expected], 3.0)
    assert all(torch.equal(a, b) for a, b in zip(targets, expected))
    model = [torch.empty_like(t, dtype=torch.bfloat16) for t in grads]
    foreach_copy(grads, model)
    assert all(torch.equal(m, g.to(torch.bfloat16)) for m, g in zip(model, grads))


def test_the_trainers_optimizer_runs_torchs_fused_adam(megatron_cpu):
    """``fuse_adam`` under ``build_optimizer``: every torch Adam group megatron-core made is fused,
    and its step gives the foreach form's weights (float32, within rounding)."""
    from tests.training import steps

    _, state = steps.small_state()
    adams = [inner.optimizer for inner in getattr(state.optimizer, "chained_optimizers", [state.optimizer])]
    groups = [group for adam in adams for group in adam.param_groups]
    assert groups and all(group["fused"] and not group["foreach"] for group in groups)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)) for _ in range(2)]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, c in zip(params, copies):
        p.grad = torch.randn(p.shape, generator=gen)
        c.grad = p.grad.clone()
    fused = torch.optim.AdamW(params, lr=0.1, weight_decay=0.1, fused=True)
    loop = torch.optim.AdamW(copies, lr=0.1, weight_decay=0.1, foreach=True)
    for _ in range(3):
        fused.step()
        loop.step()
    assert all(torch.allclose(p, c, rtol=1e-6, atol=1e-7) for p, c in zip(params, copies))
