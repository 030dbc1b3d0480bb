# creditstream — developer verbs. `make help` lists them.
# A fresh clone needs only: `make demo` (the whole platform on one machine) and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST := $(BIN)/pytest
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

export CREDITSTREAM_LOG_FORMAT ?= auto

##@ Setup
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n\033[1m%s\033[0m\n", substr($$0, 5)} \
	  /^[a-zA-Z0-9_.-]+:.*##/ {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "creditstream needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

.PHONY: install
install: $(STAMP) ## Create .venv and install creditstream with every extra (pinned)

##@ Quality
.PHONY: lint
lint: $(STAMP) ## ruff, mypy, generated files up to date (contract docs, rendered manifests)
	$(BIN)/ruff check services tests
	$(BIN)/ruff format --check services tests
	$(BIN)/mypy
	$(PY) -m creditstream.contract_docs --check
	@# NOTE: k8s/rendered/ must match the chart (also pinned by tests/chart/test_manifests.py).
	$(PY) scripts/fetch_helm.py >/dev/null
	rm -rf .cache/rendered-check
	$(PY) scripts/render_manifests.py --helm .tools/helm-3/helm --out .cache/rendered-check >/dev/null
	diff -r k8s/rendered .cache/rendered-check || \
	  { echo "k8s/rendered is out of date: run 'make manifests'"; exit 1; }

.PHONY: fmt
fmt: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format services tests
	$(BIN)/ruff check --fix services tests

.PHONY: contract-docs
contract-docs: $(STAMP) ## Regenerate docs/contract/*.schema.json from the code
	$(PY) -m creditstream.contract_docs --write

##@ Tests
.PHONY: services
services: ## Check RabbitMQ and PostgreSQL are reachable (prints how to start them if not)
	@$(PY) -m creditstream.preflight

.PHONY: test
test: $(STAMP) services ## Everything CI runs: lint, unit, integration, chart, short fault tests, quick bench
	$(MAKE) --no-print-directory lint
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)
	$(MAKE) --no-print-directory bench-quick

.PHONY: test-unit
test-unit: $(STAMP) ## Unit tests only (no services)
	$(PYTEST) tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: $(STAMP) services ## Integration tests against the real RabbitMQ and PostgreSQL
	$(PYTEST) tests/integration $(PYTEST_ARGS)

.PHONY: test-faults
test-faults: $(STAMP) services ## Fault-injection tests, long variants included
	$(PYTEST) tests/faults $(PYTEST_ARGS)

##@ Model
.PHONY: train
train: $(STAMP) ## Retrain models/credit_default.onnx (+ model card, report PNG) from the data set
	$(BIN)/creditstream train

##@ Run
.PHONY: bench
bench: $(STAMP) services ## Full benchmark (< 10 min): writes docs/benchmarks.md
	$(BIN)/creditstream bench

.PHONY: bench-quick
bench-quick: $(STAMP) services ## Quick benchmark (sanity, not targets)
	$(BIN)/creditstream bench --quick --out .cache/bench-quick

.PHONY: clean
clean: ## Remove caches, run folders and local databases (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .cache runs creditstream.db*
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

-include mk/*.mk
