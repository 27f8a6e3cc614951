"""Initial weights and single-process reference runs, made once per test session."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import ParitySetup


@pytest.fixture(scope="session")
def parity_setup(toy_data, tmp_path_factory) -> ParitySetup:
    return ParitySetup(toy_data, tmp_path_factory.mktemp("parity"))
