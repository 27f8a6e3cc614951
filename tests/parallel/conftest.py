"""Initial weights and single-process reference runs, made once per test session."""

from __future__ import annotations

import pytest

from tests.parallel.layouts import COMMON, Model, launch, train


class ParitySetup:
    def __init__(self, toy_data: str, root):
        self.toy_data, self.root = toy_data, root
        self._references: dict[str, list[dict]] = {}

    def init_weights(self, model: Model) -> str:
        """A weights-only checkpoint of ``model``'s initial weights (single process)."""
        path = self.root / f"{model.name}_init"
        if not path.exists():
            launch(self.root / f"{model.name}_init_run", f"data.path={self.toy_data}", *COMMON, *model.overrides,
                  "train.iters=0", f"checkpoint.save={path}")
        return str(path / "iter_0000000")

    def run(self, model: Model, out, *overrides: str, nproc: int = 1) -> list[dict]:
        """A ``model`` run from the shared initial weights; ``overrides`` win over COMMON."""
        return train(out, f"data.path={self.toy_data}", *COMMON, *model.overrides,
                     f"checkpoint.load={self.init_weights(model)}", *overrides, nproc=nproc)

    def reference(self, model: Model) -> list[dict]:
        if model.name not in self._references:
            self._references[model.name] = self.run(model, self.root / f"{model.name}_reference")
        return self._references[model.name]


@pytest.fixture(scope="session")
def parity_setup(toy_data, tmp_path_factory) -> ParitySetup:
    return ParitySetup(toy_data, tmp_path_factory.mktemp("parity"))
