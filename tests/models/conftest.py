"""Fixtures for the model-part tests: megatron-core's parallel state on the CPU, in-process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def megatron_cpu():
    """A world of one over gloo with megatron-core's model-parallel state (tp=pp=cp=1) and the CPU
    redirections, via megaomni's own start-up. Idempotent: reuses a process group / parallel state
    another test already made; module-scoped so that a module running after one that shut them
    down (megaomni.platform.distributed.shutdown) gets them back."""
    from megaomni.config import OmniConfig
    from megaomni.platform.distributed import init_distributed

    cfg = OmniConfig()
    cfg.train.device = "cpu"
    init_distributed(cfg)
    yield
