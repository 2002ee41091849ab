# gridflex: `make demo` and `make test` each build/refresh .venv from the lock and run.
# The lock (requirements.lock for the service, requirements-dev.lock for the tests and tools)
# holds every package with its exact version and hashes; `make lock` refreshes both from
# pyproject.toml, and tests/test_lock.py fails when the two disagree.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
RUNTIME_LOCK := requirements.lock
DEV_LOCK     := requirements-dev.lock
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed
MIN_VENV := .venv-min

.PHONY: demo test test-slow test-install test-min lint typecheck imports pytest bench lock clean

$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'pip==$(PIP_VERSION)'

# the exact versions of the lock, hash-checked; then gridflex itself, without resolving again
$(RUNTIME_STAMP): pyproject.toml $(RUNTIME_LOCK) | $(BIN)/python
	@echo "installing gridflex and its locked libraries into $(VENV) (a minute or two the first time) ..."
	$(BIN)/python -m pip install --quiet --require-hashes -r $(RUNTIME_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(DEV_LOCK) | $(BIN)/python
	@echo "installing gridflex with its locked test tools into $(VENV) (a minute or two the first time) ..."
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@ $(RUNTIME_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/gridflex demo

test: $(DEV_STAMP) lint typecheck imports pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check agent adapters tests bench
	$(BIN)/ruff format --check agent adapters tests bench

typecheck: $(DEV_STAMP)
	$(BIN)/mypy agent adapters

imports: $(DEV_STAMP)
	$(BIN)/lint-imports

# two workers, one test file each at a time: the suite waits on brokers, devices and browsers
# far more than it computes, so this halves the wall time on two cores
pytest: $(DEV_STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

# the year-long backtest replays against the plain per-interval loop, a real local Ray (minutes)
test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -m slow

# a wheel of the checkout in a new venv, every documented command run from outside the checkout,
# and docs/install.md followed as the service user
test-install: $(DEV_STAMP)
	$(BIN)/python -m pytest -m install tests/install

# the lowest versions pyproject.toml admits for every direct dependency, then the suite: proves
# the floors a plain `pip install gridflex` may pick (not in .ci/run: it resolves afresh)
test-min: $(DEV_STAMP)
	rm -rf $(MIN_VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --resolution lowest-direct \
		--python-version 3.11 -o $(MIN_VENV).txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet -r $(MIN_VENV).txt
	$(MIN_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(MIN_VENV)/bin/python -m pytest -n 2 --dist loadfile

# refresh both locks from pyproject.toml (uv: one resolution for every platform and Python 3.11+)
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile --quiet pyproject.toml --universal --python-version 3.11 \
		--generate-hashes --no-header -o $(RUNTIME_LOCK)
	$(BIN)/uv pip compile --quiet pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --no-header -o $(DEV_LOCK)

# full sizes; `make test` runs each bench's --quick mode (tests/bench/test_quick.py)
bench: $(DEV_STAMP)
	for script in $$(grep -l '^if __name__ == "__main__":' bench/*.py); do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(MIN_VENV) $(MIN_VENV).txt .mypy_cache .ruff_cache .pytest_cache .hypothesis
