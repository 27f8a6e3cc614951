"""Initial weights that depend on ``train.seed`` and each weight's global name alone, not on the
parallel layout: a run from a seed trains the same model under any TP / PP / VPP / EP and either
pipeline schedule.

megatron-core's CPU initialisation draws every weight whole from one random stream and keeps this
rank's tensor-parallel slice, so TP ranks agree; but a pipeline stage or an EP rank builds other
layers or experts from that stream, so a layer built elsewhere got other values. Here:

- the LLM's random weights are drawn again after it is built, each whole (one expert's at a time)
  from a generator seeded by the seed and its checkpoint key (global layer number, global expert
  index), with the init function megatron-core gave it, and this rank's shard copied out of it.
  The shards are the checkpoint's own (``sharded_state_dict``), so they are exactly what a
  checkpoint of another layout would reshard. Norm weights (ones) and biases (zeros) are left.
- each encoder is built whole on its rank(s), from a random state seeded by the seed and its name.

megatron-core's own draws are skipped while the LLM is built (``draws_deferred``): they would
all be drawn again here, and drawing twice doubled an MoE LLM's build.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

# Checkpoint-key endings -> the TransformerConfig field holding the init function megatron-core uses.
_RANDOM = (
    ("word_embeddings.weight", "embedding_init_method"),
    ("output_layer.weight", "init_method"),
    ("linear_proj.weight", "output_layer_init_method"),
    ("linear_fc2.weight", "output_layer_init_method"),
    ("linear_qkv.weight", "init_method"),
    ("linear_fc1.weight", "init_method"),
    ("router.weight", "init_method"),
    ("gate_weight", "init_method"),
)
# Constant at construction (norms: ones, biases: zeros), hence already the same in every layout.
_CONSTANT = ("layer_norm_weight", "layer_norm_bias", "layernorm.weight", "layernorm.bias", ".bias")


_INIT_FIELDS = tuple(sorted({field for _, field in _RANDOM}))


def _drawn_later(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextmanager
def draws_deferred(config):
    """megatron-core's init functions as no-ops inside, restored after, for building the LLM
    before ``reinit_llm``. Its init path still runs, so it still marks each tensor-parallel weight
    (``tensor_model_parallel``, ``partition_dim``), which it does nowhere else (turning
    ``perform_initialization`` off loses the marks, and with them TP's grad norm). The weights
    hold uninitialised memory until ``reinit_llm`` draws them."""
    saved = {field: getattr(config, field) for field in _INIT_FIELDS}
    for field in _INIT_FIELDS:
        setattr(config, field, _drawn_later)
    try:
        yield
    finally:
        for field, init in saved.items():
            setattr(config, field, init)


def stable_seed(seed: int, name: str) -> int:
    """A 63-bit seed from ``seed`` and ``name``, the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def seeded(seed: int, name: str):
    """The CPU random state seeded for ``name`` inside, restored after (the draws made inside
    leave the surrounding stream as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed(seed, name))
        yield


def _init_function(config, key: str):
    for ending, field in _RANDOM:
        if key.endswith(ending):
            return getattr(config, field)
    if key.endswith(_CONSTANT):
        return None
    raise ValueError(f"no initial-weight rule for the LLM weight {key}: add one to megaomni/models/initial_weights.py")


def _whole(seed: int, shard: ShardedTensor, init) -> torch.Tensor:
    """The whole (unsharded) tensor ``shard`` is a piece of; one expert's under an expert axis."""
    lead = shard.prepend_axis_num
    with seeded(seed, f"{shard.key}{list(shard.global_offset[:lead])}"):
        whole = torch.empty(shard.global_shape[lead:], dtype=torch.float32)
        init(whole)
    return whole


@torch.no_grad()
def reinit_llm(llm, seed: int) -> None:
    """Draw ``llm``'s random weights from ``seed`` and their global names (see the module docstring)."""
    config = llm.config
    state = llm.sharded_state_dict()
    apply_factories(state)  # gated fc1: its gate and up halves, each a view of the parameter
    storages = {p.untyped_storage().data_ptr() for p in llm.parameters()}
    last = (None, None)  # the gate and up halves come from one whole tensor: draw it once
    for shard in nested_values(state):
        if not isinstance(shard, ShardedTensor) or shard.data.untyped_storage().data_ptr() not in storages:
            continue  # extra state, buffers
        init = _init_function(config, shard.key)
        if init is None:
            continue
        lead = shard.prepend_axis_num
        name = (shard.key, shard.global_offset[:lead])
        if last[0] != name:
            last = (name, _whole(seed, shard, init))
        piece = last[1][tuple(slice(o, o + n) for o, n in zip(shard.global_offset[lead:], shard.local_shape))]
        shard.data.copy_(piece)
