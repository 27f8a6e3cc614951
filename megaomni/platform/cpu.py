"""Run megatron-core on a machine without CUDA (CPU tensors, gloo process groups).

megatron-core is written for GPUs and calls ``torch.cuda`` in places that are not about speed
but about where tensors live. This module is the only place megaomni redirects those calls, and
:func:`activate` is called only when CUDA is unavailable (or forced by tests via
``MEGAOMNI_FORCE_CPU=1``); the GPU path never goes through it. What is redirected, and why:

1. ``torch.cuda.current_device()`` -> ``torch.device("cpu")``, and a ``TorchFunctionMode`` that
   rewrites ``device="cuda"`` / ``device=<int>`` arguments of tensor factories and
   ``Tensor.cuda()`` / ``Tensor.to("cuda")`` to the CPU: the global memory buffer, the pipeline
   schedules, the grad clipping and the checkpoint loader allocate on ``"cuda"`` or on
   ``current_device()``. The mode is not consulted inside autograd's backward (sequence- and
   context-parallel backward passes allocate on ``current_device()``), hence the device object.
2. ``Tensor.type()`` reports CPU tensors under their ``torch.cuda.*Tensor`` names: the optimizer
   and grad clipping assert ``param.grad.type() == 'torch.cuda.FloatTensor'``.
3. The CUDA RNG (``torch.cuda.get_rng_state/set_rng_state/manual_seed`` and megatron's
   ``_get_cuda_rng_state``/``_set_cuda_rng_state``) is the CPU generator: megatron's RNG tracker
   forks "the CUDA RNG" around dropout, which on CPU tensors must fork the CPU generator.
4. ``torch.cuda.synchronize()`` is a no-op (pipeline p2p and checkpointing call it).
5. ``pin_memory=True`` in tensor factories is dropped: pinned memory needs an accelerator, and
   context parallelism's rotary-table slicing asks for it.
6. CUDA streams and events are inert stand-ins (``torch.cuda.Stream``, ``current_stream``,
   ``stream(...)``): the MoE all-to-all dispatcher copies routing counts to the host on a side
   stream; on the CPU there is one stream of work.
7. ``all_to_all_single`` takes split sizes as Python lists: the MoE dispatcher hands over the
   tensors / numpy arrays it would have copied from the GPU, which gloo refuses.
8. ``all_gather`` into pieces of different lengths (and ``reduce_scatter`` from them, its
   backward): the MoE dispatcher gathers each expert-TP rank's tokens under sequence
   parallelism, a different count per rank; NCCL takes uneven pieces, gloo refuses them
   ("invalid tensor size"), so the pieces travel padded to the longest.

The mode costs a few percent of step time on tiny models; it is never active on GPUs.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE = False

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
    torch.uint8: "torch.cuda.ByteTensor",
    torch.bool: "torch.cuda.BoolTensor",
}


def _is_cuda_device(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to the CPU (item 1), CUDA type names (item 2) and pinning (item 5)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _InertEvent:
    def synchronize(self) -> None:
        pass

    def wait(self, *_args) -> None:
        pass


class _InertStream:
    def __init__(self, *_args, **_kwargs):
        pass

    def wait_stream(self, *_args) -> None:
        pass

    def wait_event(self, *_args) -> None:
        pass

    def record_event(self, *_args) -> _InertEvent:
        return _InertEvent()

    def synchronize(self) -> None:
        pass


_CPU_STREAM = _InertStream()


def _with_list_splits(all_to_all_single):
    def call(output, input, output_split_sizes=None, input_split_sizes=None, *args, **kwargs):
        def as_list(s):
            return None if s is None else [int(x) for x in s]

        return all_to_all_single(output, input, as_list(output_split_sizes), as_list(input_split_sizes),
                                 *args, **kwargs)

    return call


def _uneven_all_gather(all_gather):
    def call(tensor_list, tensor, group=None, async_op=False):
        lengths = [len(t) for t in tensor_list]
        if all(n == len(tensor) for n in lengths):
            return all_gather(tensor_list, tensor, group=group, async_op=async_op)
        padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        pieces = [torch.empty_like(padded) for _ in lengths]
        all_gather(pieces, padded, group=group)
        for out, piece, n in zip(tensor_list, pieces, lengths):
            out.copy_(piece[:n])
        return None

    return call


def _cpu_get_rng_state(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(state: torch.Tensor, *_args, **_kwargs) -> None:
    torch.set_rng_state(state)


def activate() -> None:
    """Install the redirections (idempotent). Refuses to run where CUDA is usable."""
    global _ACTIVE
    if _ACTIVE:
        return
    if torch.cuda.is_available() and os.environ.get("MEGAOMNI_FORCE_CPU") != "1":
        raise RuntimeError("megaomni.platform.cpu must not be activated on a CUDA machine")
    from megatron.core.tensor_parallel import random as mcore_random

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = _cpu_get_rng_state
    torch.cuda.set_rng_state = _cpu_set_rng_state
    torch.cuda.manual_seed = torch.manual_seed
    torch.cuda.random.get_rng_state = _cpu_get_rng_state
    torch.cuda.random.set_rng_state = _cpu_set_rng_state
    mcore_random._get_cuda_rng_state = _cpu_get_rng_state
    mcore_random._set_cuda_rng_state = _cpu_set_rng_state
    torch.cuda.Stream = _InertStream
    torch.cuda.current_stream = lambda *a, **k: _CPU_STREAM
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.Tensor.record_stream = lambda self, *a: None
    torch.distributed.all_to_all_single = _with_list_splits(torch.distributed.all_to_all_single)
    torch.distributed.all_gather = _uneven_all_gather(torch.distributed.all_gather)
    _CudaToCpuMode().__enter__()  # process-wide: stays on for the life of the process
    _ACTIVE = True
