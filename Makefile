# Two entry points: `make demo` (install + main job) and `make test` (install + tests).
# Each creates the virtual environment in $(VENV) when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/nitp-report quickstart --out runs/quickstart

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

.PHONY: install demo test
