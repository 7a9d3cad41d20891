# The README's two commands: `make demo` and `make test`. Both create/update the virtualenv,
# install the project, fetch the JVM jars if missing, and then do their job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,tvm
PYTEST_ARGS ?=

.PHONY: demo test test-unit typecheck lint install jars clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

jars: install
	$(BIN)/infaas infra fetch

# Lint, types, the unit layer first (no JVM, no network: a broken policy fails in seconds), then the
# integration and fault layers on the local stack (started if it is not up, and stopped again if so).
test: jars lint typecheck test-unit
	$(BIN)/infaas infra run -- $(BIN)/python -m pytest -q -ra tests/integration tests/faults $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest -q -ra tests/unit $(PYTEST_ARGS)

typecheck: install
	$(BIN)/mypy infaas/policies infaas/schemas infaas/sim

# Stack up, demo zoo registered, the pipeline serving a trace with mixed requirements.
demo: jars
	$(BIN)/infaas demo

lint: install
	$(BIN)/ruff check infaas tests examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
