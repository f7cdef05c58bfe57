# Two commands on a fresh machine: `make run` and `make test`. Each creates the
# virtualenv and installs requirements.txt (torch first) when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: setup run test lint format clean-runs

$(INSTALLED): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(INSTALLED)

setup: $(INSTALLED)

run: $(INSTALLED)
	$(PY) run.py $(ARGS)

test: $(INSTALLED)
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(INSTALLED)
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .
