# `make serve` and `make test` work on a fresh machine with only Python 3.
#
# Two environments, so that nothing of the tests reaches a server:
#   .venv       (`make serve`): the package with the `vision` and `documents` extras (the
#               built-in processors' image and PDF libraries), what the embedded default
#               needs; no PostgreSQL or S3 client.
#   .venv-test  (`make test`, `lint`, `bench`): the dev extras (which include `all`, so every
#               backend and processor is tested) and the sample processor package.
# Each is built the first time and again when what it installs changes. The serving one is
# rebuilt from empty, so nothing installed into it by hand (or by an older Makefile) survives.
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test
SERVE_STAMP := $(VENV)/.serve-installed
TEST_STAMP := $(TEST_VENV)/.installed
TBIN := $(TEST_VENV)/bin

# `make serve HOST=0.0.0.0 PORT=8080`; without them, `ephemera serve` decides (its options'
# defaults, EPHEMERA_HOST and EPHEMERA_PORT). Only values given on the command line count:
# some shells export HOST for their own purposes.
given = $(filter command line,$(origin $(1)))
SERVE_ARGS := $(if $(call given,HOST),--host '$(HOST)') $(if $(call given,PORT),--port '$(PORT)')

.PHONY: install serve-env test-env serve test test-fast lint bench bench-1m bench-all bench-transfer \
	bench-cleanup bench-processing bench-import bench-tus bench-download clean

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[vision,documents]'
	touch $(SERVE_STAMP)

$(TEST_STAMP): pyproject.toml tests/plugins/sample/pyproject.toml
	$(PYTHON) -m venv --clear $(TEST_VENV)
	$(TBIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# A third-party processor package, for the entry-point tests; never in the serving .venv.
	$(TBIN)/python -m pip install --quiet --disable-pip-version-check -e tests/plugins/sample
	touch $(TEST_STAMP)

serve-env: $(SERVE_STAMP)

test-env: $(TEST_STAMP)

install: serve-env test-env

serve: serve-env
	exec $(VENV)/bin/ephemera serve $(SERVE_ARGS)

lint: test-env
	$(TBIN)/ruff check src tests bench examples
	$(TBIN)/ruff format --check src tests bench examples
	$(TBIN)/mypy
	# The layer contracts in pyproject.toml ([tool.importlinter]).
	$(TBIN)/lint-imports --no-cache

# Test files run in parallel processes (`--dist loadfile`: a file's tests stay together, in
# order); TEST_WORKERS=0 runs them in this process, one after another. The slowest tests are
# listed at the end: the suite's budget is 15 minutes, and that list says where it goes.
TEST_WORKERS ?= 3

test: lint
	$(TBIN)/pytest --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# The unit tier alone: in process, no servers or subprocesses, well under a minute.
test-fast: test-env
	$(TBIN)/pytest tests/unit

# The scale table of issue 14 from one run (bench/README.md); the 1M run takes longer, so
# it is its own target, measuring 200k again in the same run to show what stays flat.
bench: test-env
	$(TBIN)/python -m bench.scale --sizes 200000

bench-1m: test-env
	$(TBIN)/python -m bench.scale --sizes 200000,1000000

# Every benchmark's own detailed report, one after the other.
bench-all: bench-transfer bench-cleanup bench-processing bench-import bench-tus bench-download

bench-transfer: test-env
	$(TBIN)/python -m bench.transfer

bench-cleanup: test-env
	$(TBIN)/python -m bench.cleanup

bench-processing: test-env
	$(TBIN)/python -m bench.processing

bench-import: test-env
	$(TBIN)/python -m bench.importing

bench-tus: test-env
	$(TBIN)/python -m bench.tus

# A 1 GiB download: nginx alone, ephemera behind nginx (X-Accel-Redirect), ephemera streaming.
bench-download: test-env
	$(TBIN)/python -m bench.download

clean:
	rm -rf $(VENV) $(TEST_VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache \
		.ruff_cache
