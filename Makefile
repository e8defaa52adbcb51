# Two entry points for a fresh machine:
#   make demo   -> own venv, install, run the end-to-end job on built-in simulated data
#   make test   -> own venv, install, lint (ruff), format check (ruff), type check (mypy), test suite
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,slurm]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tomomatch demo --out demo_out

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

.PHONY: install demo test
