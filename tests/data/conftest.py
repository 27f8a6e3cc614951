"""Fixtures for the data-pipeline tests: a small toy data set made in-process, once per session."""

from __future__ import annotations

import importlib.util
import os
import types

import pytest

from megaomni.config import OmniConfig
from megaomni.data.tokenizer import OmniTokenizer
from tests.data.helpers import rng

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL_SAMPLES = 32


@pytest.fixture(scope="session")
def toy() -> types.ModuleType:
    """tools/make_toy_data.py as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_toy_data", os.path.join(ROOT, "tools", "make_toy_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_toy(toy, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("small_toy"))
    toy.write_toy_data(out, samples=SMALL_SAMPLES, seed=0, shards=2)
    return out


@pytest.fixture(scope="session")
def tokenizer(small_toy) -> OmniTokenizer:
    return OmniTokenizer(os.path.join(small_toy, "tokenizer.model"))


@pytest.fixture
def cfg(small_toy) -> OmniConfig:
    config = OmniConfig()
    config.data.path = small_toy
    return config


@pytest.fixture
def clip(toy) -> bytes:
    """A good 16-bit WAV tone."""
    return toy.tone(rng(), "low")
