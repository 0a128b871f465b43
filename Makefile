# The two commands of the README:
#   make run    set up, migrate a SQLite database, load demo data, serve the console and run its worker
#   make test   set up, then run the test suite on SQLite and PostgreSQL (+ a real browser)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 5000
export CONSOLE_BASE_URL ?= http://127.0.0.1:$(PORT)

.PHONY: run test setup services browser conformance bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m flask --app console db upgrade
	$(PY) -m flask --app console demo
	@echo "Serving on $(CONSOLE_BASE_URL) with the worker beside it — open the link above. Ctrl-C stops both."
	@$(PY) -m flask --app console worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(PY) -m gunicorn -c python:console.gunicorn_conf -b 127.0.0.1:$(PORT) 'console:create_app()'

services:
	@scripts/ensure-postgres

browser:
	@scripts/ensure-chromium

test: setup services browser
	$(PY) -m pytest -n 2

conformance: setup services
	CONFORMANCE_PARTS=$${CONFORMANCE_PARTS:-api,console,realtime} ../shared/conformance/run -q
	TEST_DATABASE_URL=$${TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres} \
	  CONFORMANCE_PARTS=$${CONFORMANCE_PARTS:-api,console,realtime} ../shared/conformance/run -q

bench: setup services
	bench/run

clean:
	rm -rf $(VENV) instance *.egg-info
