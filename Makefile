# revos-schema: `make run` serves the app on http://127.0.0.1:8000, `make test` runs the tests.
# Both use the embedded PostgreSQL in .pgdata/ unless DATABASE_URL is set.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Touched after a successful install: pip runs again only when requirements.txt is newer.
STAMP := $(VENV)/.requirements-installed
PYTEST_ARGS ?=

# Export DATABASE_URL pointing at the embedded PostgreSQL, started if needed, unless it is set.
define use_database
if [ -z "$${DATABASE_URL:-}" ]; then
	DATABASE_URL="$$($(PY) -m revos_schema.localdb url)"
	export DATABASE_URL
	echo "Using the embedded PostgreSQL in .pgdata/ (stop it with: make stop)"
fi
endef

.PHONY: help venv install run test lint stop bench

help:
	@echo "make run    serve the app and its admin on http://127.0.0.1:8000 (embedded PostgreSQL)"
	@echo "make test   run the tests (PYTEST_ARGS=... passes options to pytest)"
	@echo "make lint   ruff check, ruff format --check, mypy"
	@echo "make bench  run the bench/*.py scripts"
	@echo "make stop   stop the embedded PostgreSQL"
	@echo "make venv   create .venv and install requirements.txt"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements.txt
	touch $@

venv install: $(STAMP)

run: $(STAMP)
	@$(use_database)
	export DEBUG="$${DEBUG:-1}"
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_local_admin
	echo "The embedded PostgreSQL keeps running after the server stops; \`make stop\` ends it."
	exec $(PY) manage.py runserver 127.0.0.1:8000

# pytest runs last so that its summary line is the last thing printed.
test: $(STAMP)
	@$(use_database)
	exec $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy revos_schema/localdb.py

stop:
	@if [ -x $(PY) ]; then $(PY) -m revos_schema.localdb stop; else echo "No $(VENV): nothing to stop."; fi

bench: $(STAMP)
	@shopt -s nullglob
	scripts=(bench/[!_]*.py)
	if [ $${#scripts[@]} -eq 0 ]; then echo "No benchmarks in bench/."; exit 0; fi
	$(use_database)
	export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"
	for script in "$${scripts[@]}"; do
		echo "== $$script"
		$(PY) "$$script"
	done
