"""megaomni.platform.lazy_compile: megatron-core's fusion functions compile on their first call,
not while megatron-core is imported (the import no longer loads inductor), with the same results."""

from __future__ import annotations

import subprocess
import sys

import torch

from megaomni.platform.lazy_compile import lazy_compile
from tests.conftest import ROOT


def test_compiles_on_the_first_call_only(monkeypatch):
    made = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: made.append(options) or (lambda *a: fn(*a) + 0))

    @lazy_compile(dynamic=True)
    def scaled(x):
        return 2 * x

    assert made == [] and scaled.__name__ == "scaled"
    x = torch.arange(4.0)
    assert torch.equal(scaled(x), 2 * x) and torch.equal(scaled(x + 1), 2 * x + 2)
    assert made == [{"dynamic": True}]


def test_importing_megatron_core_after_megaomni_loads_no_compiler():
    code = ("import sys, megaomni, megatron.core, megatron.core.jit as jit; "
            "from megatron.core.fusions.fused_bias_dropout import bias_dropout_add_fused_train as f; "
            "from megaomni.platform.lazy_compile import lazy_compile; "
            "print(jit.jit_fuser is lazy_compile, 'torch._inductor' in sys.modules, f.__wrapped__.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["True", "False", "bias_dropout_add_fused_train"], out.stderr[-2000:]
