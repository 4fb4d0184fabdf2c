# imgov developer entry points. `make test` and `make demo` are all a fresh machine needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

KAFKA      := infra/kafka/kafka.sh
CLICKHOUSE := infra/clickhouse/clickhouse.sh
DICOM      := infra/dicom/install.sh
PROMETHEUS := infra/prometheus/prometheus.sh

.PHONY: help venv dicom-tools kafka-tools monitoring-tools monitoring-up monitoring-down up down status test unit integration fuzz lint bench soak demo clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create the virtualenv and install imgov with its dev tools

# DCMTK's storescu is the real DICOM sender of the gateway's tests (apt-get, once; root).
dicom-tools: ## Install DCMTK (storescu) if it is missing
	bash $(DICOM) install

# Debian's kcat: the third-party Kafka client of the security tests (apt-get, once; root).
kafka-tools: ## Install kcat if it is missing
	bash $(KAFKA) tools

# Debian's prometheus (promtool) and prometheus-alertmanager (apt-get, once; root).
monitoring-tools: ## Install Prometheus, promtool and Alertmanager if they are missing
	bash $(PROMETHEUS) install

monitoring-up: ## Start Prometheus and Alertmanager (idempotent)
	bash $(PROMETHEUS) start

monitoring-down: ## Stop Prometheus and Alertmanager (idempotent)
	-bash $(PROMETHEUS) stop

up: venv ## Start Kafka, ClickHouse, Prometheus and Alertmanager (idempotent)
	bash $(KAFKA) start
	bash $(CLICKHOUSE) start
	bash $(PROMETHEUS) start

down: ## Stop Kafka, ClickHouse, Prometheus and Alertmanager (idempotent)
	-bash $(PROMETHEUS) stop
	-bash $(CLICKHOUSE) stop
	-bash $(KAFKA) stop

status: ## Show whether the services run, with their memory
	@bash $(KAFKA) status || true
	@bash $(CLICKHOUSE) status || true
	@bash $(PROMETHEUS) status || true

# The services are stopped even when a test fails, and the target exits with the
# test result. A service that fails to start fails the run (before any test), and so
# does an import that breaks the layers (pyproject.toml [tool.importlinter]).
test: venv dicom-tools kafka-tools monitoring-tools ## Install what is missing, start the services, run every test, stop them
	@status=0; \
	$(MAKE) --no-print-directory up || status=$$?; \
	if [ $$status -eq 0 ]; then \
		$(BIN)/lint-imports --no-cache || status=$$?; \
	fi; \
	if [ $$status -eq 0 ]; then \
		$(BIN)/pytest -q tests/unit tests/golden tests/integration || status=$$?; \
	else \
		echo "make test: a service failed to start; logs are under .imgov/logs/" >&2; \
	fi; \
	$(MAKE) --no-print-directory down; \
	exit $$status

unit: venv ## Run the unit tests only (no servers)
	$(BIN)/pytest -q tests/unit tests/golden

integration: venv ## Run the integration tests against running services (make up first)
	$(BIN)/pytest -q tests/integration

# The fuzz tests (tests/unit/fuzz) also run in `make test` and `make unit`, 500 examples
# per target (about 30 s); this runs FUZZ_EXAMPLES per target, without the per-test
# timeout. The examples run and inputs rejected per target are printed at the end and
# written to .imgov/fuzz/summary.json; a failure is kept in .hypothesis/ and replayed first.
FUZZ_EXAMPLES ?= 10000
fuzz: venv ## Fuzz the decoders and gateway parsers, FUZZ_EXAMPLES per target (default 10000)
	IMGOV_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q --timeout=0 tests/unit/fuzz

lint: venv ## Ruff, mypy (strict on the pure core and the contracts), the import layers
	$(BIN)/ruff check streams schemas sinks tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: venv ## Run the benchmarks; results are appended to .imgov/bench/results.jsonl
	@for b in tests/benchmarks/bench_*.py; do m=$${b%.py}; echo "== $$m"; $(BIN)/python -m $${m//\//.} || exit $$?; done

ROUNDS ?= 10
soak: venv up ## Kill -9 the live worker at random moments, ROUNDS times (default 10); not in CI
	$(BIN)/python -m tests.integration.soak_restarts --rounds $(ROUNDS)

demo: venv ## Simulate 90 days x 3 sites, replay into chDB (.imgov/demo), write .imgov/report.html
	$(BIN)/imgov demo

clean: down ## Stop the services and delete their state and the virtualenv
	rm -rf .imgov/services $(VENV)
