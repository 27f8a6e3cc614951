# Two commands: `make train` (tiny omni model, end to end) and `make test` (the test suite).
PYTHON3 ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
TOY     := data/toy
CONFIG  ?= examples/configs/tiny_omni.yaml

.PHONY: setup train test test-quick clean

$(VENV)/.installed: requirements.txt setup.py pyproject.toml $(wildcard csrc/*.cpp)
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

$(TOY)/tokenizer.model: | $(VENV)/.installed
	$(PY) tools/make_toy_data.py --out $(TOY)

train: $(VENV)/.installed $(TOY)/tokenizer.model
	$(PY) pretrain_omni.py --config $(CONFIG) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=30 $(ARGS)

test-quick: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" $(ARGS)

clean:
	rm -rf runs $(TOY)
