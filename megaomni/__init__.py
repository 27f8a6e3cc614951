"""megaomni: a training engine for omni-modal LLMs on megatron-core."""

from megaomni.platform import lazy_compile as _lazy_compile

__version__ = "0.1.0"
# megatron-core's fusions compile on first use, not while it is imported (megaomni.platform.lazy_compile).
_lazy_compile.install()
