# Token Vault. `make run` for a first run on a fresh machine (the web server and a worker;
# one Ctrl-C stops both), `make test`, `make lint`, `make bench`, `make soak`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FLASK  := $(BIN)/flask --app app
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: run test lint bench soak clean

$(VENV)/.runtime-installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.runtime-installed
	$(BIN)/python -m vault.devenv --base-url http://$(HOST):$(PORT)
	$(FLASK) db upgrade
	$(FLASK) users create-first-admin
	$(BIN)/python -m vault.worker.together --host $(HOST) --port $(PORT)

# The end-to-end tests' OpenID Connect provider (node-oidc-provider, from npm).
E2E_PROVIDER := tests/e2e/oidc_provider
$(E2E_PROVIDER)/node_modules/.package-lock.json: $(E2E_PROVIDER)/package.json $(E2E_PROVIDER)/package-lock.json
	npm ci --prefix $(E2E_PROVIDER) --no-audit --no-fund --loglevel=error

# axe-core, the accessibility checker the browser tests inject into every page (from npm).
AXE := tests/browser/axe
$(AXE)/node_modules/.package-lock.json: $(AXE)/package.json $(AXE)/package-lock.json
	npm ci --prefix $(AXE) --no-audit --no-fund --loglevel=error

test: $(VENV)/.dev-installed $(E2E_PROVIDER)/node_modules/.package-lock.json $(AXE)/node_modules/.package-lock.json
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (with import sorting), mypy, and the layer contracts of pyproject.toml (import-linter).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check vault
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# Two gunicorn instances and the worker under 50 clients for SOAK_SECONDS (300); not in `test`.
soak: $(VENV)/.dev-installed
	$(BIN)/python -m tests.soak

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
