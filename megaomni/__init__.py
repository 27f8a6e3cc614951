"""megaomni: a training engine for omni-modal LLMs on megatron-core."""

__version__ = "0.1.0"
