# The two commands of the README. Both go through scripts/setup.sh first (idempotent).
# test-fast is a development aid (the tests that need no engine), not a set-up command.
VENV ?= .venv
export VENV

.PHONY: setup demo test test-fast bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/promptsearch run --task summary

test:
	@PROMPTSEARCH_MODELS=all bash scripts/setup.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=15

# Both models are prepared: the tests of `promptsearch models` and of set-up check them.
test-fast:
	@PROMPTSEARCH_MODELS=all bash scripts/setup.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not engine"

bench: setup
	$(VENV)/bin/python bench/throughput.py
