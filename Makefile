# The two commands: `make run` and `make test`. Each sets up .venv (pinned stack) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.helixflow-installed

.PHONY: run test setup system-deps run-deps slurm postgres lint unit integration bench clean

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

run: setup run-deps
	$(VENV)/bin/helixflow run

# What `helixflow run` calls (samtools, bcftools, tabix, MEGAHIT, GROMACS); nothing test-only.
run-deps:
	@bash scripts/install-system-deps.sh run

# The run's tools plus the tests' and benchmarks' (peer tools, ART, Chromium, openssh).
system-deps:
	@bash scripts/install-system-deps.sh test

# A one-node Slurm cluster (+ GROMACS) for the Slurm tests; only as root (CI is).
slurm:
	@if [ "$$(id -u)" -eq 0 ]; then bash deployments/slurm/local-cluster.sh; \
	else echo "not root: no local Slurm cluster (its tests skip, or fail under CI=true)"; fi

# A local PostgreSQL on 127.0.0.1 for the server-on-PostgreSQL tests; only as root (CI is).
postgres:
	@if [ "$$(id -u)" -eq 0 ]; then bash deployments/postgres/local-postgres.sh; \
	else echo "not root: no local PostgreSQL (its tests skip, or fail under CI=true)"; fi

test: setup system-deps slurm postgres
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest -m "not integration"

integration: setup system-deps postgres
	$(PY) -m pytest -m integration

lint: setup
	$(VENV)/bin/ruff check .

bench: setup system-deps
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
