"""megatron-core's import-time ``torch.compile`` calls, made on first use instead.

megatron-core's ``jit_fuser`` (``megatron/core/jit.py``) is ``torch.compile``, applied as a
decorator to ~40 fusion functions while megatron-core is imported; the first such call imports
inductor. That is ~3 s of every process's start-up on a 2-core CPU machine (a third of a tiny
training run; the tests start hundreds of processes), spent even where no compiled function ever
runs (``train.fusion`` off, the CPU default). :func:`install` (from ``megaomni/__init__.py``)
makes ``jit_fuser`` a decorator that calls ``torch.compile`` on the function's first call: the
same compiled function wherever one runs, and inside a region being compiled (a compiled layer,
``train.fusion=layers``) the plain function, which dynamo traces into that region's graph.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys

_MODULE = "megatron.core.jit"


def lazy_compile(fn=None, **options):
    """``torch.compile(fn, **options)``, built on the first call (usable as ``@lazy_compile`` or
    ``@lazy_compile(**options)``, as ``torch.compile`` is)."""
    if fn is None:
        return functools.partial(lazy_compile, **options)
    compiled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal compiled
        import torch

        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, **options)
        return compiled(*args, **kwargs)

    return call


class _Loader(importlib.abc.Loader):
    """The module's own loader, with ``jit_fuser`` replaced once the module has run."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_source, get_code, ...: the original loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        import torch

        if module.jit_fuser is torch.compile:
            module.jit_fuser = lazy_compile


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Before megatron-core is imported: its ``jit_fuser`` will be :func:`lazy_compile`. After,
    nothing (its fusion functions are decorated already)."""
    if _MODULE not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
