"""What a parity run records on each rank, for the tests to check that its layout took effect and
to compare a grad norm summed in float64.

``install()`` wraps a few functions of the trainer and of megatron-core's optimizer (test code
only; training computes as before) and writes ``OUTPUT_DIR/probe/rank_<R>.json`` at the end of
``train``:

- ``groups``: the world size and this rank's index of each megatron-core process group;
- ``chunks``: per model chunk, the global numbers of the LLM layers it holds;
- ``params``: parameter elements by place (a global layer number, the LLM's other parameters by
  name, or an encoder's name) and by kind (``split``: marked tensor-parallel; ``expert``: a routed
  expert's; ``split_expert``: both; ``other``);
- ``encoder_calls``: forward calls of each encoder on this rank;
- ``grad_norm64``: per iteration, the norm of the gradients the optimizer clips by, its squares
  summed and all-reduced in float64 (megatron-core's CPU fallback sums in fp32, which on a
  4096-word output layer is off by ~1e-4 relative: more than the layouts differ by).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import TransformerLayer

GROUPS = {
    "tp": (ps.get_tensor_model_parallel_world_size, ps.get_tensor_model_parallel_rank),
    "pp": (ps.get_pipeline_model_parallel_world_size, ps.get_pipeline_model_parallel_rank),
    "cp": (ps.get_context_parallel_world_size, ps.get_context_parallel_rank),
    "dp": (ps.get_data_parallel_world_size, ps.get_data_parallel_rank),
    "ep": (ps.get_expert_model_parallel_world_size, ps.get_expert_model_parallel_rank),
    "etp": (ps.get_expert_tensor_parallel_world_size, ps.get_expert_tensor_parallel_rank),
}


def _kind(name: str, param: torch.nn.Parameter) -> str:
    # An expert's by its module (megatron-core marks it ``allreduce=False`` only under EP; the
    # shared expert is ``shared_experts``).
    split, expert = getattr(param, "tensor_model_parallel", False), ".experts." in f".{name}"
    return {(True, True): "split_expert", (False, True): "expert", (True, False): "split"}.get((split, expert), "other")


class RankProbe:
    def __init__(self):
        self.record: dict = {"chunks": [], "encoder_calls": defaultdict(int), "grad_norm64": {}}
        self.params: dict = defaultdict(lambda: defaultdict(int))
        self._squares: list[float] = []

    def _count_chunk(self, chunk) -> None:
        layers = [m for m in chunk.llm.modules() if isinstance(m, TransformerLayer)]
        self.record["chunks"].append(sorted(layer.layer_number for layer in layers))
        in_layers = set()
        for layer in layers:
            for name, param in layer.named_parameters():
                in_layers.add(id(param))
                self.params[str(layer.layer_number)][_kind(name, param)] += param.numel()
        for name, param in chunk.llm.named_parameters():
            if id(param) not in in_layers:
                self.params[f"llm.{name}"][_kind(name, param)] += param.numel()
        for name in chunk.encoder_names:
            encoder = getattr(chunk, f"{name}_encoder")
            for key, param in encoder.named_parameters():
                self.params[name][_kind(key, param)] += param.numel()
            encoder.register_forward_hook(lambda *_, name=name: self._count_call(name))

    def _count_call(self, name: str) -> None:
        self.record["encoder_calls"][name] += 1

    def wrap_build(self, build):
        def build_training_state(*args, **kwargs):
            state = build(*args, **kwargs)
            for chunk in state.chunks:
                self._count_chunk(chunk)
            return state
        return build_training_state

    def wrap_norm(self, norm):
        """megatron-core's ``get_grad_norm_fp32``, also summing the squares in float64 over the same group."""
        def get_grad_norm_fp32(grads_for_norm, norm_type=2, grad_stats_parallel_group=None):
            grads = [grads_for_norm] if isinstance(grads_for_norm, torch.Tensor) else list(grads_for_norm)
            # On the GPU under NCCL (benchmarks/layout_parity.py), which reduces only device tensors.
            on_gpu = dist.get_backend(grad_stats_parallel_group) == "nccl"
            squares = torch.zeros(1, dtype=torch.float64, device="cuda" if on_gpu else "cpu")
            for grad in grads:
                squares += grad.detach().double().square().sum().to(squares.device)
            dist.all_reduce(squares, group=grad_stats_parallel_group)
            self._squares.append(float(squares))
            return norm(grads_for_norm, norm_type, grad_stats_parallel_group)
        return get_grad_norm_fp32

    def wrap_step_end(self, check_finite):
        """``check_finite`` ends each step's record: the step's norm calls (one per optimizer of a chain) add up."""
        def end_step(iteration, *args, **kwargs):
            self.record["grad_norm64"][iteration] = math.sqrt(sum(self._squares))
            self._squares.clear()
            return check_finite(iteration, *args, **kwargs)
        return end_step

    def wrap_train(self, train):
        def probed_train(cfg):
            result = train(cfg)
            self.record["groups"] = {key: {"size": size(), "rank": rank()} for key, (size, rank) in GROUPS.items()}
            self.record["params"] = self.params
            out = os.path.join(cfg.train.output_dir, "probe")
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, f"rank_{dist.get_rank()}.json"), "w") as f:
                json.dump(self.record, f)
            return result
        return probed_train


def install() -> None:
    import megatron.core.optimizer.optimizer as megatron_optimizer

    import megaomni.training.trainer as trainer

    probe = RankProbe()
    trainer.build_training_state = probe.wrap_build(trainer.build_training_state)
    trainer.check_finite = probe.wrap_step_end(trainer.check_finite)
    trainer.train = probe.wrap_train(trainer.train)
    megatron_optimizer.get_grad_norm_fp32 = probe.wrap_norm(megatron_optimizer.get_grad_norm_fp32)


def read_probes(output_dir) -> list[dict]:
    """Every rank's record, in rank order."""
    out = os.path.join(output_dir, "probe")
    return [json.load(open(os.path.join(out, f"rank_{r}.json"))) for r in range(len(os.listdir(out)))]
