# The two commands of the README. Both go through scripts/setup.sh first (idempotent).
VENV ?= .venv
export VENV

.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/promptsearch run --task summary

test:
	@PROMPTSEARCH_MODELS=all bash scripts/setup.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	$(VENV)/bin/python bench/throughput.py
