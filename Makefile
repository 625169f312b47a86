# Two commands work on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2

.PHONY: run test lint format docs openapi bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/referral-api db upgrade
	$(BIN)/referral-api seed-demo
	@# No gunicorn access log: it would print query strings, which carry search terms.
	$(BIN)/gunicorn -c python:referral_api.gunicorn_config --workers $(WORKERS) --bind $(HOST):$(PORT) \
		'referral_api:create_app()'

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(VENV)/.installed
	$(BIN)/python -m referral_api.access.table > docs/roles.md

openapi: $(VENV)/.installed
	$(BIN)/referral-api openapi write openapi/openapi.json

# Benchmarks (bench/README.md): seeds 100,000 encrypted cases into its own PostgreSQL database
# (BENCH_PG_URL, default postgresql://postgres@127.0.0.1:5432/test), serves the real app and
# the bare baseline with gunicorn, drives them with wrk, profiles, and drops the database.
BENCH_ARGS ?= --fresh --drop
bench: $(VENV)/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
