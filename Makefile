# gvpo-bench: `make compare` (the main job) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install install-dev compare test lint format clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU build from local disk here.
# pip's output goes to .venv/install.log (shown only if the install fails).
$(VENV)/.core: pyproject.toml | $(BIN)/python
	@echo "installing gvpo-bench into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -e . > $(VENV)/install.log 2>&1 || (tail -40 $(VENV)/install.log; exit 1)
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	@echo "installing gvpo-bench[dev] into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -e ".[dev]" > $(VENV)/install.log 2>&1 || (tail -40 $(VENV)/install.log; exit 1)
	touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

compare: $(VENV)/.core
	$(BIN)/bench compare $(ARGS)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-results:
	rm -rf results
