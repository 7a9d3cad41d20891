# The README's two commands: `make demo` and `make test`. Both create/update the virtualenv,
# install the project, fetch the JVM jars if missing, and then do their job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,tvm
PYTEST_ARGS ?=

.PHONY: demo test lint install jars clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

jars: install
	$(BIN)/infaas infra fetch

# Starts the local stack if it is not up, runs the tests, and stops it again if it started it.
test: jars
	$(BIN)/ruff check infaas tests
	$(BIN)/infaas infra run -- $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

# Stack up, demo zoo registered, the pipeline serving a trace with mixed requirements.
demo: jars
	$(BIN)/infaas demo

lint: install
	$(BIN)/ruff check infaas tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
