"""tools/prepare_data.py as a module, for the tests of it."""

from __future__ import annotations

import os
import types

import pytest

from tests.conftest import ROOT, load_script

TOOL = os.path.join(ROOT, "tools", "prepare_data.py")


@pytest.fixture(scope="module")
def tool() -> types.ModuleType:
    return load_script("tools/prepare_data.py")
