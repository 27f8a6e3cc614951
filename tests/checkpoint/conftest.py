"""Fixtures of the checkpoint tests: megatron-core on the CPU, as for the model parts."""

from tests.models.conftest import megatron_cpu  # noqa: F401
