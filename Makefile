# The two commands: `make run` and `make test`. Each sets up .venv (pinned stack) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.helixflow-installed

.PHONY: run test setup system-deps lint unit integration bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "helixflow needs Python >= 3.11 (PYTHON=$(PYTHON))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/helixflow run

system-deps:
	@bash scripts/install-system-deps.sh

test: setup system-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest -m "not integration"

integration: setup system-deps
	$(PY) -m pytest -m integration

lint: setup
	$(VENV)/bin/ruff check .

bench: setup system-deps
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
