# Two entry points: `make demo` (install + main job) and `make test` (install + tests).
# Each creates the virtual environment in $(VENV) when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0      # the CPU wheel on these machines, first
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,gguf,dropin]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/nitp-report quickstart --out runs/quickstart

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests

docs: $(BIN)/.installed  # the generated tables and maps that tests keep equal to their sources
	$(BIN)/python tools/make_docs.py

test-fast: $(BIN)/.installed  # one worker per core (pytest-xdist)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

.PHONY: install demo docs test test-fast
