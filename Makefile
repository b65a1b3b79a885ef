# mmprep development tasks. `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
EXAMPLE_PLUGINS := $(sort $(dir $(wildcard examples/plugins/*/pyproject.toml)))
STAMP := $(VENV)/.installed
SHELL := bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# One pip command installs the pinned dependencies, the core and every plugin (editable).
$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt requirements/dev.txt $(wildcard plugins/*/pyproject.toml) $(wildcard examples/plugins/*/pyproject.toml)
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/constraints.txt -r requirements/dev.txt \
	  -e . $(foreach p,$(PLUGINS) $(EXAMPLE_PLUGINS),-e $(p)) 2>&1 | { grep -v "WARNING: Location" || true; }
	$(BIN)/python -c "import mmprep" && touch $(STAMP)

install: $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/quickstart/run.sh out/quickstart

test: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q tests $(PYTEST_ARGS)

bench: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/p1.py --rows 10000000

clean:
	rm -rf out .pytest_cache
