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
KAFKA_CLUSTER      := infra/kafka/cluster.sh
CLICKHOUSE_CLUSTER := infra/clickhouse/cluster.sh
CLUSTER_ENV        := infra/cluster/cluster.env

.PHONY: help venv dicom-tools kafka-tools monitoring-tools monitoring-up monitoring-down up down status cluster-up cluster-down cluster-status test test-cluster unit integration fuzz lint bench soak demo clean

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

# The unit and golden tests (no servers, CPU-bound) run in a second pytest process beside the
# integration tests (mostly waiting on Kafka, ClickHouse and the workers): on two cores that
# takes the unit suite's minutes off the run. Its output is printed when both have ended.
UNIT_LOG := .imgov/logs/unit-tests.log

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
		mkdir -p $(dir $(UNIT_LOG)); \
		$(BIN)/pytest -q -p no:cacheprovider --durations=15 tests/unit tests/golden \
			--ignore=tests/unit/fuzz > $(UNIT_LOG) 2>&1 & unit=$$!; \
		$(BIN)/pytest -q --durations=25 tests/unit/fuzz tests/integration || status=$$?; \
		echo "== unit and golden tests (run beside the integration tests; $(UNIT_LOG))"; \
		if wait $$unit; then tail -n 20 $(UNIT_LOG); else status=1; cat $(UNIT_LOG); fi; \
	else \
		echo "make test: a service failed to start; logs are under .imgov/logs/" >&2; \
	fi; \
	$(MAKE) --no-print-directory down; \
	exit $$status

# Cluster mode (DESIGN §9): three KRaft brokers, ZooKeeper and two ClickHouse replicas, on
# their own ports beside the single-node services. infra/cluster/cluster.env points imgov at it.
cluster-up: venv ## Start the local cluster: 3 Kafka brokers, ZooKeeper, 2 ClickHouse replicas (idempotent)
	bash $(CLICKHOUSE) install
	bash $(KAFKA_CLUSTER) start
	bash $(CLICKHOUSE_CLUSTER) start

cluster-down: ## Stop the local cluster (idempotent)
	-bash $(CLICKHOUSE_CLUSTER) stop
	-bash $(KAFKA_CLUSTER) stop

cluster-status: ## Show whether the cluster's nodes run
	@bash $(KAFKA_CLUSTER) status || true
	@bash $(CLICKHOUSE_CLUSTER) status || true

# The node-loss tests (tests/cluster), the second step of CI: start the cluster, run them with
# cluster.env, stop it. Like `make test`, a node that fails to start fails the run.
test-cluster: venv ## Start the cluster, run the node-loss tests (tests/cluster), stop it
	@status=0; \
	$(MAKE) --no-print-directory cluster-up || status=$$?; \
	if [ $$status -eq 0 ]; then \
		set -a; . ./$(CLUSTER_ENV); set +a; \
		$(BIN)/pytest -q tests/cluster || status=$$?; \
	else \
		echo "make test-cluster: a cluster node failed to start; logs are under .imgov/logs/cluster/" >&2; \
	fi; \
	$(MAKE) --no-print-directory cluster-down; \
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
