"""Run a plan on this rank: encoder shares, LLM chunks, and the point-to-point traffic between
pipeline ranks, checking before every action that its inputs exist.

The LLM chunks run through megatron-core's own ``forward_step`` / ``backward_step`` (loss
scaling, per-token loss, MoE auxiliary-loss scaling) and the step ends with its
``finalize_model_grads``; only the order and the encoder work are the plan's. Encoder outputs
cross to the first stage's rank detached, so each share's backward runs on its own rank when the
plan says, from the gradient the first stage sends back.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.pipeline_parallel.schedules import backward_step, forward_step
from megatron.core.utils import get_model_type

from megaomni.data.batch import Batch
from megaomni.pipeline.channels import Channels
from megaomni.pipeline.plan import (
    COMPUTE,
    ENC_B,
    ENC_F,
    LLM_B,
    LLM_F,
    RECV,
    SEND,
    Action,
    Plan,
    PlanError,
    check_plan,
    makes,
    needs,
    without_backward,
)
from megaomni.pipeline.shares import Item, assemble, merge_inputs, share_inputs, share_outputs, split_outputs
from megaomni.pipeline.timeline import Event, Timeline


class _Clock:
    """Action start/end times: CUDA events on the GPU (read once the step is done, with the
    host's issue times beside them), wall time on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.origin = self._now()  # the GPU is idle here (synchronised): both clocks start together

    def _now(self):
        host = time.perf_counter()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event, host
        return host, host

    def mark(self, rank: int, action: Action, start) -> None:
        self.marks.append((rank, action, start, self._now()))

    def events(self) -> list[Event]:
        (origin, host_origin), events = self.origin, []
        if self.cuda:
            torch.cuda.synchronize()
        for rank, a, (start, host_start), (end, host_end) in self.marks:
            if self.cuda:
                times = (origin.elapsed_time(start) / 1e3, origin.elapsed_time(end) / 1e3,
                         host_start - host_origin, host_end - host_origin)
            else:
                times = (start - origin, end - origin)
            events.append(Event(rank, a.kind, a.micro, a.stage, *times, call=a.call))
        return events


class PlanExecutor:
    """Runs plans over this rank's model chunks (megatron-core DDP-wrapped ``OmniModel``s)."""

    def __init__(self, ddp_chunks: list, device: torch.device, joint: bool):
        self.chunks = ddp_chunks
        first = _unwrap(ddp_chunks[0])
        self.config = first.config  # where the trainer set finalize_model_grads_func
        self.model_type = get_model_type(ddp_chunks[0])
        self.device = device
        self.joint = joint
        self.rank = ps.get_pipeline_model_parallel_rank()
        self.pp = ps.get_pipeline_model_parallel_world_size()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.channels = Channels(self.pp, len(ddp_chunks), device)
        self.encoders = {name: getattr(first, f"{name}_encoder") for name in first.encoder_names}
        # An encoder frozen whole (model.freeze) takes no gradient: its outputs do not require
        # grad, no gradient of them crosses back (both ends leave it out), its backward is skipped.
        self.trains = {name: any(p.requires_grad for p in e.parameters()) for name, e in self.encoders.items()}
        self.dtype = next(first.parameters()).dtype
        tp = ps.get_tensor_model_parallel_world_size()
        self.seq_divisor = (tp if self.config.sequence_parallel else 1) * ps.get_context_parallel_world_size()
        self.action: Action | None = None  # the one running now, for the step watchdog (megaomni.training.watchdog)

    def _act_shape(self, batch: Batch) -> tuple[int, ...]:
        b, s = batch.tokens.shape
        return (s // self.seq_divisor, b, self.config.hidden_size)

    def _buffers(self, plan: Plan, key: tuple, batch: Batch, items: list[Item]):
        name, micro, owner = key
        if name in ("act", "grad"):
            return torch.empty(self._act_shape(batch), dtype=self.dtype, device=self.device)
        rows = share_outputs(items, plan.shares[micro][owner])
        return {m: torch.empty(n, self.config.hidden_size, dtype=self.dtype, device=self.device)
                for m, n in sorted(rows.items()) if name == "feat" or self.trains[m]}

    def run(self, plan: Plan, batches: list[Batch], items: list[list[Item]], forward_step_func,
            record: bool = False, sync_debug: str = "", forward_only: bool = False):
        """One step's forward and backward (``items[m]``: micro-batch ``m``'s media items);
        returns megatron-core's per-micro-batch loss reports (last stage) and, with ``record``,
        this pipeline group's :class:`Timeline`. ``sync_debug`` ("warn" | "error"): CUDA's sync
        debug mode around the actions, on a GPU. ``forward_only``: the plan's forward alone
        (evaluation, under ``torch.no_grad``), no gradient reduced."""
        if plan.pp != self.pp or plan.num_micro != len(batches):
            raise PlanError(f"plan for pp={plan.pp} and {plan.num_micro} micro-batches given to "
                            f"pp={self.pp} with {len(batches)} micro-batches")
        if forward_only:
            plan = without_backward(plan)
        check_plan(plan)
        batches = [b.to(self.device) for b in batches]
        clock = None
        if record:
            dist.barrier(group=self.pp_group)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            clock = _Clock(self.device)
        reports: list = []
        with _sync_debug(sync_debug if self.device.type == "cuda" else ""):
            tokens = self._run_actions(plan, batches, items, forward_step_func, clock, reports)
        if not forward_only:
            if self.joint and self.encoders:
                self._reduce_encoder_grads()
            self.config.finalize_model_grads_func(self.chunks,
                                                  tokens if self.config.calculate_per_token_loss else None)
        timeline = None
        if clock is not None:
            events = clock.events()
            gathered = [None] * self.pp
            dist.all_gather_object(gathered, events, group=self.pp_group)
            merged = [e for rank_events in gathered for e in rank_events]
            timeline = Timeline(self.pp, merged, max((e.end for e in merged), default=0.0))
        return reports, timeline

    def _run_actions(self, plan, batches, items, forward_step_func, clock, reports) -> torch.Tensor:
        """This rank's actions of the plan, in order; returns its count of loss tokens."""
        store: dict = {}
        encoded: dict = {}  # first micro-batch of a call -> this rank's encoder outputs, attached to their graph
        saved: dict = {}  # (micro, stage) -> (input, output) for the backward
        sends: list = []
        tokens = torch.zeros([], dtype=torch.int, device=self.device)
        for index, action in enumerate(plan.actions[self.rank]):
            self.action = action
            for key in needs(plan, self.rank, action):
                if key not in store:
                    raise PlanError(f"pipeline rank {self.rank} (global rank {dist.get_rank()}), action "
                                    f"{index} ({action}): its input {key} does not exist yet")
            start = clock._now() if clock and action.kind in COMPUTE else None
            m, batch = action.micro, batches[action.micro]
            if action.kind == ENC_F:
                self._encode(plan, action, batches, items, store, encoded)
            elif action.kind == ENC_B:
                # One backward for the whole call: its shares' output gradients, in call order.
                grads = [store.pop(("feat_grad", g, self.rank)) for g in action.micros]
                outputs = encoded.pop(m)
                names = [n for n in sorted(outputs) if self.trains[n]]
                if names:
                    torch.autograd.backward([outputs[n] for n in names],
                                            [torch.cat([g[n] for g in grads if n in g]) for n in names])
            elif action.kind == LLM_F:
                tokens += self._forward(plan, action, batch, items[m], store, saved, reports, forward_step_func)
            elif action.kind == LLM_B:
                self._backward(plan, action, store, saved)
            elif action.kind == SEND:
                group, peer = self.channels.channel(self.rank, action.peer, action.key[0])
                for tensor in _tensors(store.pop(action.key)):
                    tensor = tensor.detach().contiguous()
                    sends.append((dist.isend(tensor, dst=peer, group=group), tensor))
            elif action.kind == RECV:
                value = self._buffers(plan, action.key, batch, items[m])
                group, peer = self.channels.channel(action.peer, self.rank, action.key[0])
                for tensor in _tensors(value):
                    dist.irecv(tensor, src=peer, group=group).wait()
                if action.key[0] == "act":
                    value.requires_grad_()
                elif action.key[0] == "feat":
                    for n, tensor in value.items():
                        tensor.requires_grad_(self.trains[n])
                store[action.key] = value
            if start is not None:
                clock.mark(self.rank, action, start)
            for key in makes(plan, self.rank, action):
                store.setdefault(key, True)  # markers ("ran") and values made above
        for work, _ in sends:
            work.wait()
        self.action = None
        return tokens

    def _encode(self, plan, action, batches, items, store, encoded) -> None:
        """One encoder call (per modality) over this rank's shares of the action's micro-batches;
        each share's outputs are stored detached, so the first stage's backward stops there and
        the call's backward runs when the plan says."""
        shares = [(g, plan.shares[g][self.rank]) for g in action.micros]
        inputs = merge_inputs([share_inputs(batches[g].media, items[g], share) for g, share in shares])
        outputs = {name: self.encoders[name](media) for name, media in sorted(inputs.items())}
        encoded[action.micro] = outputs
        pieces = split_outputs(outputs, [share_outputs(items[g], share) for g, share in shares])
        for (g, _), piece in zip(shares, pieces):
            store[("feat", g, self.rank)] = {n: t.detach().requires_grad_(self.trains[n]) for n, t in piece.items()}

    def _forward(self, plan, action, batch, items, store, saved, reports, forward_step_func):
        m, s = action.micro, action.stage
        chunk = s // plan.pp
        input_tensor = store.pop(("act", m, s - 1)) if s > 0 else None
        step = forward_step_func
        if s == 0:
            shares = plan.shares[m]
            outputs = [store.pop(("feat", m, r)) if shares[r] else {} for r in range(plan.pp)]
            step = partial(forward_step_func, features=assemble(items, shares, outputs))
            saved[("media", m)] = outputs
        output, num_tokens = forward_step(
            step, iter([batch]), self.chunks[chunk], plan.num_micro, input_tensor, reports, self.config,
            ps.get_context_parallel_world_size(), vp_stage=chunk if plan.vpp > 1 else None,
            is_last_stage=s == plan.stages - 1)
        saved[(m, s)] = (input_tensor, output)
        if s < plan.stages - 1:
            store[("act", m, s)] = output
        # Off the last stage megatron-core returns a host zero: added as a scalar, never copied
        # (a copy from pageable memory would stall this rank's host until its GPU caught up).
        return num_tokens

    def _backward(self, plan, action, store, saved):
        m, s = action.micro, action.stage
        input_tensor, output = saved.pop((m, s))
        output_grad = store.pop(("grad", m, s + 1)) if s < plan.stages - 1 else None
        input_grad = backward_step(input_tensor, output, output_grad, self.model_type, self.config)
        if s > 0:
            store[("grad", m, s)] = input_grad
            return
        for owner, share in enumerate(saved.pop(("media", m))):
            if plan.shares[m][owner]:
                store[("feat_grad", m, owner)] = {
                    n: (t.grad if t.grad is not None else torch.zeros_like(t)) for n, t in share.items()
                    if self.trains[n]}

    def _reduce_encoder_grads(self) -> None:
        """Each pipeline rank holds the gradient of its shares only: sum them, so every copy of
        the encoders takes the same optimizer step."""
        # Frozen parameters (model.freeze, a tower's unrun layers) have no gradient buffer.
        grads = [p.main_grad for e in self.encoders.values() for p in e.parameters() if p.requires_grad]
        if not grads:  # all frozen
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.pp_group)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


@contextmanager
def _sync_debug(mode: str):
    """CUDA's sync debug mode ("warn" | "error") inside the block; "" leaves it off."""
    if not mode:
        yield
        return
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _tensors(value) -> list[torch.Tensor]:
    """The tensors a value moves as, in one order on both ends: encoder outputs are a dict
    (modality -> rows), everything else one tensor."""
    return [value[n] for n in sorted(value)] if isinstance(value, dict) else [value]


def _unwrap(module):
    while hasattr(module, "module"):
        module = module.module
    return module
