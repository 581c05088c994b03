# mailgate — `make run` starts the service with embedded defaults, `make test` runs lint and the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CODE   := src tests $(wildcard bench)

.PHONY: run test lint fmt docs clean bench tools bytecode

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP) bytecode
	$(BIN)/mailgate run $(ARGS)

# Every mailgate process imports the package. An environment with PYTHONDONTWRITEBYTECODE
# set (CI's is) never caches the compiled modules, so each process compiled all of src/ again
# (0.6 s of every service start, once per worker); compileall writes them whatever that says,
# and recompiles only what changed.
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q src

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy

# The outside programs the suite runs (.ci/tools.txt): installed when missing.
tools:
	sh .ci/tools

# One worker: several end-to-end tests bound their waits for a machine that runs only them.
# `make test PYTEST_ARGS="-n 2 --dist loadfile"` (pytest-xdist) runs two files at a time:
# 10 minutes instead of 17 here, with the live `top` test seen to time out under that load.
test: lint tools bytecode
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

fmt: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

docs: $(STAMP)
	$(BIN)/mailgate docs --write

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
