# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/welkin_dash
TEST_BROKER_URL ?= redis://127.0.0.1:6379/13
export DJANGO_SETTINGS_MODULE := welkin_dash.settings

.PHONY: install run test lint bench-evaluate bench-scan bench-registry bench-dashboard bench-export bench-fleet services deploy-check image

$(VENV)/.installed: requirements.txt requirements-runtime.txt pyproject.toml
	@# Debian's python3 makes a venv only with python3-venv (ensurepip) installed.
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	# welkin-evaluate, the console script (the project itself, editable, no new packages).
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed

services:
	bash scripts/services.sh

# A first look: SQLite under ./var, scans in-process, demo data when there is no cluster.
run: install
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput -v0
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py load_demo --if-empty
	@echo ""
	@echo "  welkin-dash: http://127.0.0.1:8000/"
	@echo "  Log in as officer (security officer), auditor, or lead (team lead of the"
	@echo "  payments and web namespaces). Demo password: welkin-demo"
	@echo ""
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py runserver 127.0.0.1:8000

test: install services
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	DEBUG=1 $(BIN)/pytest $(PYTEST_ARGS)

# Style, formatting, the packages' import order (README: layout), and models that match
# their migrations.
lint: install
	$(BIN)/python scripts/check_layers.py
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

bench-evaluate: install
	DEBUG=1 $(BIN)/python -m tests.bench.bench_evaluate --pods $${PODS:-100000}

bench-scan: install services
	$(BIN)/python -m tests.bench.bench_scan --sizes $${SIZES:-10000,50000,150000}

bench-registry: install services
	$(BIN)/python -m tests.bench.bench_registry

# ARGS="--findings 5000000 --clusters 50" for the large fleet (BENCH_DATABASE_URL: where).
bench-dashboard: install services
	$(BIN)/python -m tests.bench.bench_dashboard $(ARGS)

bench-export: install services
	$(BIN)/python -m tests.bench.bench_export

bench-fleet: install services
	$(BIN)/python -m tests.bench.bench_fleet

# Kubernetes: render every overlay, check each pod template with our own guardrail and
# PSA restricted, validate against the Kubernetes OpenAPI schemas, check the alert rules.
deploy-check: install services
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	DEBUG=1 $(BIN)/pytest -q -p no:cacheprovider tests/test_deploy.py

# The image, with whichever builder this machine has (no Docker engine is needed: buildah
# or podman build it rootless).
IMAGE ?= welkin-dash:latest
image:
	@if command -v buildah >/dev/null; then buildah bud --layers -t $(IMAGE) .; \
	elif command -v podman >/dev/null; then podman build -t $(IMAGE) .; \
	elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then docker build -t $(IMAGE) .; \
	else echo "image: no buildah, podman or Docker engine here" >&2; exit 1; fi
