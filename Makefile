# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUN ?= runs/demo

.PHONY: install test test-fast demo data-samples bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make test: set up the venv and run the whole test suite (CPU, offline, ~10 min on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

## make test-fast: everything but the end-to-end tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow" $(PYTEST_ARGS)

## make demo: train, evaluate, export and predict on data_samples/ (offline: < 10 min on 2 CPU cores)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out $(RUN)

## make data-samples: regenerate data_samples/ (procedural images)
data-samples: $(STAMP)
	$(BIN)/python data_samples/make_samples.py

clean:
	rm -rf $(VENV) runs .pytest_cache build *.egg-info
