# Two commands on a fresh machine:  `make run`  starts the proxy,  `make test`  runs the tests.
PYTHON ?= $(shell command -v python3.12 || ls $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The end-to-end tests mostly wait on real processes: two pytest workers (one test file each
# at a time, so a file's fixtures stay together) halve the suite's wall time on 2 cores.
PYTEST_WORKERS ?= 2

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 not found: install it (pyenv install 3.12) or set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: install run test lint bench bench-quick
install: $(STAMP)

run: $(STAMP)
	$(BIN)/fiveplane run $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/fiveplane test
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py --quick $(ARGS)
