# gridflex: `make demo` and `make test` each build/refresh .venv from pyproject.toml and run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP     := $(VENV)/.dev-installed

.PHONY: demo test test-slow test-install lint typecheck imports pytest bench clean

$(BIN)/python:
	@echo "creating $(VENV) with $(PYTHON) ..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing gridflex and its libraries into $(VENV) (pymodbus, paho-mqtt, pandas, pydantic, ...; a minute or two the first time) ..."
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing gridflex with its test tools into $(VENV) (pytest, ruff, mypy, import-linter; a minute or two the first time) ..."
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

# the year-long backtest replays against the plain per-interval loop (minutes on 2 cores)
test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -m slow

# a wheel of the checkout in a new venv, every documented command run from outside the checkout
test-install: $(DEV_STAMP)
	$(BIN)/python -m pytest -m install tests/install

bench: $(DEV_STAMP)
	for script in bench/*.py; do $(BIN)/python $$script; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
