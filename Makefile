# Two commands on a fresh machine:  `make run`  starts the proxy,  `make test`  runs the tests.
PYTHON ?= $(shell command -v python3.12 || ls $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

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
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python tests/benchmarks/run.py --quick $(ARGS)
