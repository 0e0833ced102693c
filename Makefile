# `make serve` and `make test` work on a fresh machine with only Python 3: they create .venv
# and install the package with its dev extras the first time (and again when pyproject changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench bench-transfer bench-cleanup bench-processing clean

$(STAMP): pyproject.toml tests/plugins/sample/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# A third-party processor package, for the entry-point tests.
	$(BIN)/python -m pip install --quiet -e tests/plugins/sample
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/ephemera serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: bench-transfer bench-cleanup bench-processing

bench-transfer: $(STAMP)
	$(BIN)/python -m bench.transfer

bench-cleanup: $(STAMP)
	$(BIN)/python -m bench.cleanup

bench-processing: $(STAMP)
	$(BIN)/python -m bench.processing

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
