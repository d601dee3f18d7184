# Catwalk's front door: `make run` serves the whole product, `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint format check-migrations bench conformance screenshots clean help

help:
	@echo "make run    - install, migrate and serve Catwalk on http://$(HOST):$(PORT)"
	@echo "make test   - run the test suite (SQLite, or DATABASE_URL / REDIS_URL when set)"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks (relays, analysis, builds, page speed), written to docs/benchmarks.md"
	@echo "make screenshots - every page at desktop and phone width, into docs/screenshots/"

$(PY):
	@interpreter=$$(scripts/find-python) || exit 1; \
	echo "Creating $(VENV) with $$interpreter"; \
	"$$interpreter" -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(PY)
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(PY)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	@scripts/install-sandbox-tools
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	@echo
	@echo "  Catwalk is starting on http://$(HOST):$(PORT)  (Ctrl-C stops everything)"
	@echo "  Create your account at http://$(HOST):$(PORT)/accounts/signup/"
	@$(PY) manage.py admin_link | sed 's/^/  /'
	@echo
	CATWALK_HOST=$(HOST) CATWALK_PORT=$(PORT) $(BIN)/honcho --procfile Procfile.dev start

# The suite runs in two workers, a test file each at a time (pytest-xdist): most tests wait on
# servers they start, so two keep both cores busy. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	CATWALK_TESTING=1 $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The models match their migrations, and every migration (the apps' own and django-oauth-toolkit's)
# applies to a new SQLite database; CI's test run applies them to PostgreSQL.
check-migrations: $(VENV)/.installed-dev
	$(PY) manage.py makemigrations --check --dry-run
	@folder=$$(mktemp -d) && trap 'rm -rf "$$folder"' EXIT && \
	env -u DATABASE_URL -u REDIS_URL CATWALK_DATA_DIR="$$folder" \
	$(PY) manage.py migrate --noinput --verbosity 0 && echo "Migrations apply on SQLite."

# Relay benchmarks, written to docs/benchmarks.md. Peers install on first use into bench/.peers/
# from the pinned manifests in bench/peers/. Needs node, npm and wrk (apt-get install wrk).
# BENCH_ARGS="--targets direct-stdio,catwalk-gateway-uvicorn --duration 3" narrows a run.
bench: $(VENV)/.installed
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get install -y -qq wrk >/dev/null; } || { echo "make bench needs wrk: apt-get install wrk" >&2; exit 1; }
	$(PY) -m bench $(BENCH_ARGS)

CONFORMANCE_DEPS := tools/conformance/node_modules/.package-lock.json
$(CONFORMANCE_DEPS): tools/conformance/package.json tools/conformance/package-lock.json
	cd tools/conformance && npm ci --no-audit --no-fund

# The official MCP conformance suites through the whole of Catwalk (gateway, supervisor,
# bridge) in front of the stdio fixture server; a proxy adds the bearer token the suites
# cannot send. MODE=isolated runs the per-session process model.
conformance: $(VENV)/.installed-dev $(CONFORMANCE_DEPS)
	$(PY) tools/conformance/run.py 'http://127.0.0.1:{port}/mcp' --ready-timeout 180 \
	  --start '$(abspath $(PY)) -m mcpgateway.stack --port {port} --auth-proxy \
	  $(if $(filter isolated,$(MODE)),--isolated) -- $(abspath $(PY)) -m mcpgateway.fixture_server'

# Every page at desktop and phone width, into docs/screenshots/ (the README shows some), from a
# throwaway Catwalk filled through the real flow in Debian's Chromium (apt-get install chromium).
screenshots: $(VENV)/.installed-dev
	@scripts/install-sandbox-tools
	$(PY) -m catwalk.screenshots

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache bench/.peers bench/results
