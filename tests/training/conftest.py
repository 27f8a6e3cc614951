"""Fixtures of the training tests: megatron-core on the CPU, as for the model parts."""

from tests.models.conftest import megatron_cpu  # noqa: F401
