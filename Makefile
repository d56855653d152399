# The two commands of the README. Both go through scripts/setup.sh first (idempotent).
VENV ?= .venv
export VENV

.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/promptsearch generate pipelines/tasks/data/summary/test.jsonl \
		--template '{{ text }}\n\n要約:' --max-tokens 64 --stop '\n' --out runs/demo/summary

test:
	@PROMPTSEARCH_MODELS=all bash scripts/setup.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

bench: setup
	$(VENV)/bin/python bench/throughput.py
