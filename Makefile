# The same commands locally and in CI: `make test` is what .ci/run calls.
.PHONY: demo test lint bootstrap clean

VENV := .venv
BIN := $(VENV)/bin

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	$(BIN)/statelab demo

test: bootstrap
	$(BIN)/python -m pytest

lint: bootstrap
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
