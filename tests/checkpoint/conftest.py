"""Fixtures of the checkpoint tests: megatron-core on the CPU, as for the model parts, and one
tiny checkpoint root made in process."""

import pytest

from tests.models.conftest import megatron_cpu  # noqa: F401

NEWEST, OLDER = "iter_0000002", "iter_0000001"


@pytest.fixture(scope="module")
def saved(megatron_cpu, tmp_path_factory) -> str:  # noqa: F811
    """A root of the tiny model's checkpoints (tests/training/steps.py's training state) after
    one step and after two, ``latest`` naming the second."""
    from megaomni.checkpoint.dist_ckpt import save_checkpoint
    from tests.training.steps import micro_batch, small_state, step

    cfg, state = small_state()
    root = str(tmp_path_factory.mktemp("saved"))
    for iteration in (1, 2):
        step(cfg, state, [micro_batch(cfg, iteration)])
        save_checkpoint(root, iteration, state.chunks, state.optimizer, state.scheduler,
                        common={"config": cfg.to_dict()})
    return root
