from tests.models.conftest import megatron_cpu  # noqa: F401  (megatron-core on the CPU, for megaomni's model)
