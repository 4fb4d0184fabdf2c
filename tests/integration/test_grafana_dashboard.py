"""Every query of the Grafana dashboard (infra/grafana) against the real servers.

No Grafana runs here: each query is taken from the dashboard JSON and expanded as
Grafana and the ClickHouse plugin would (tests/integration/grafana_queries.py), then run.

ClickHouse: a small simulated history (2 sites, a week, failing inferences and alerts
nobody answers, plus two inputs that cannot be accepted) is replayed offline, with the
demo settings and the shipped breach policy, into a fresh database on the ClickHouse
18.16 server and into a chDB directory (ClickHouse 26, what current servers run). Every
SQL query of the dashboard, variables included, must run on both, for every site and
algorithm the variables offer, read-only as the dashboard's `compliance` user is, and
return rows for the values Grafana selects on load.

Prometheus: the server of ``make up`` (infra/prometheus/prometheus.sh, 1 s scrapes)
scrapes a worker, a gateway and an alert bridge registry of ``streams.metrics``, served
here and added to its file_sd target files; their metrics move while the test runs.
Every PromQL query, variables included, must return data (``check_prometheus_queries``,
which the live operations tests also call with a real worker).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from sinks.chdb import ChdbSink
from streams.governance import DEMO_SETTINGS, build_processor, build_validator, load_settings
from streams.metrics import BridgeMetrics, GatewayMetrics, WorkerMetrics, serve_metrics
from streams.paths import REPO_ROOT
from streams.replay.driver import replay
from streams.topics import DEFAULT_APP_ID, INFERENCE_TOPIC, KPI_TOPIC, REPORT_TOPIC
from tests.integration.conftest import CLICKHOUSE_HOST, CLICKHOUSE_PORT, require_service
from tests.integration.grafana_queries import (
    CLICKHOUSE_TYPE,
    DASHBOARD,
    DashboardQuery,
    check_prometheus_queries,
    dashboard_queries,
    expand,
)
from tests.integration.test_live_harness import (
    IMGOV,
    ch_client,
    create_database,
    drop_database,
    replay_into,
)

__all__ = ["check_prometheus_queries"]  # for the live operations tests

pytestmark = pytest.mark.integration

PROMETHEUS_PORT = int(os.environ.get("IMGOV_PROMETHEUS_PORT", "19090"))
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"
PROMETHEUS_TARGETS = REPO_ROOT / ".imgov" / "services" / "prometheus" / "targets"

SIM_DAYS = 7
# A read-only session, as the compliance profile (users.xml) gives Grafana's user, with
# the time limit the plugin sends with every query.
GRAFANA_SETTINGS = {"readonly": 2, "max_execution_time": 60}


# --- ClickHouse --------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """The replayed history: where it is and the dashboard time range that covers it."""

    database: str
    chdb_dir: Path
    time_from_s: float
    time_to_s: float


def simulate_history(path: Path, start: datetime) -> None:
    """A week at 2 sites that opens breaches and makes review candidates and dead letters.

    Inference failures (30%) open ``inference-failures-high`` and alerts nobody answers
    open ``alert-response-low`` under the shipped policy; unanswered positives whose
    report says absent are review candidates. Two bad lines become dead letters.
    """
    unanswered = ["WORKLIST_FLAG", "WORKLIST_REPRIORITISATION", "DESKTOP_WIDGET"]
    unanswered += ["MOBILE_PUSH", "PAGE", "FHIRCAST", "OTHER"]
    subprocess.run(
        [IMGOV, "simulate", "--days", str(SIM_DAYS), "--sites", "2", "--studies-per-day", "50"]
        + ["--seed", "5", "--start", start.strftime("%Y-%m-%d"), "--out", str(path), "-q"]
        + ["--failure-rate", "ICH=0.3", "--failure-rate", "PE=0.3"]
        + ["--specificity", "ICH=0.7", "--specificity", "PE=0.7"]
        + [arg for channel in unanswered for arg in ("--unanswered-channel", channel)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    with path.open("a", encoding="utf-8") as out:
        out.write('not json\n{"event_type": "inference"}\n')


def replay_into_chdb(path: Path, directory: Path) -> None:
    """The same replay as ``replay_into``, into an embedded chDB directory."""
    settings = load_settings(DEMO_SETTINGS, demo=True)
    with ChdbSink(directory) as sink:
        replay(
            [path], build_processor(settings), sink, build_validator(settings), record_events=True
        )


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    require_service("ClickHouse", CLICKHOUSE_HOST, CLICKHOUSE_PORT, "make up")
    tmp = tmp_path_factory.mktemp("grafana")
    now = datetime.now(UTC)
    start = (now - timedelta(days=SIM_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    events = tmp / "history.jsonl"
    simulate_history(events, start)
    database = f"grafana_{uuid.uuid4().hex[:10]}"
    create_database(database)
    try:
        replay_into(database, events)
        replay_into_chdb(events, tmp / "chdb")
        # Rolling 30-day windows end up to 30 days after the first event; dead letters
        # are stamped with the wall clock.
        yield History(
            database,
            tmp / "chdb",
            time_from_s=start.timestamp(),
            time_to_s=(now + timedelta(hours=1)).timestamp(),
        )
    finally:
        drop_database(database)


SqlRunner = Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def on_server(history: History) -> Iterator[SqlRunner]:
    client = ch_client(history.database)
    yield lambda sql: client.execute(sql, settings=GRAFANA_SETTINGS)
    client.disconnect()


@pytest.fixture(scope="module")
def on_chdb(history: History) -> Iterator[SqlRunner]:
    with ChdbSink(history.chdb_dir) as sink:
        yield lambda sql: sink.backend.execute(sql)[1]


def sql_queries() -> list[DashboardQuery]:
    return [q for q in dashboard_queries() if q.datasource_type == CLICKHOUSE_TYPE]


def clickhouse_variables(run: SqlRunner, history: History) -> dict[str, list[str]]:
    """Each ClickHouse variable's options, from its query (none uses another variable)."""
    return {
        q.variable: [str(row[0]) for row in run(expanded_sql(q, history, {}))]
        for q in sql_queries()
        if q.variable
    }


def selected_on_load(options: dict[str, list[str]]) -> dict[str, str]:
    """What Grafana selects: the saved current value if offered, else the first option."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    chosen = {}
    for name, values in options.items():
        (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == name]
        current = (variable.get("current") or {}).get("value")
        chosen[name] = current if current in values else values[0]
    return chosen


def expanded_sql(query: DashboardQuery, history: History, variables: dict[str, str]) -> str:
    return expand(
        query.query,
        time_from_s=history.time_from_s,
        time_to_s=history.time_to_s,
        variables=variables,
        datasource_type=CLICKHOUSE_TYPE,
    )


@pytest.mark.clickhouse
@pytest.mark.parametrize("server", ["clickhouse-18.16", "chdb"])
def test_every_sql_query_returns_rows(
    server: str,
    history: History,
    on_server: SqlRunner,
    on_chdb: SqlRunner,
    record_property: Callable[[str, object], None],
) -> None:
    run = on_server if server == "clickhouse-18.16" else on_chdb
    options = clickhouse_variables(run, history)
    assert all(options.values()), options
    chosen = selected_on_load(options)
    counts = {}
    for query in sql_queries():
        if query.variable:
            counts[query.key] = len(options[query.variable])
            continue
        rows = run(expanded_sql(query, history, chosen))
        # An aggregate (a stat panel's count) always has its one row: it must not be 0.
        nothing = len(rows) == 1 and all(value in (0, None) for value in rows[0])
        counts[query.key] = 0 if nothing else len(rows)
    empty = [key for key, n in counts.items() if n == 0]
    assert empty == [], f"no rows with {chosen}: {empty}"
    record_property("measured", f"{server} rows per query with {chosen}: {counts}")

    # Every other site and algorithm a user can pick must run too (rows or none).
    for site in options["site"]:
        for algorithm in options["algorithm"]:
            for query in sql_queries():
                if not query.variable:
                    run(
                        expanded_sql(
                            query, history, {**chosen, "site": site, "algorithm": algorithm}
                        )
                    )


@pytest.mark.clickhouse
def test_server_and_chdb_agree(history: History, on_server: SqlRunner, on_chdb: SqlRunner) -> None:
    # Same replay, same SQL: the same number of rows from both engines, so a query does
    # not depend on behaviour one of them lacks. Dead letters are left out: each replay
    # stamps them with its own wall clock, so their hourly buckets may differ.
    chosen = selected_on_load(clickhouse_variables(on_server, history))
    for query in sql_queries():
        if "rejected_events" in query.query:
            continue
        sql = expanded_sql(query, history, chosen)
        assert len(on_server(sql)) == len(on_chdb(sql)), query.key


# --- Prometheus --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_url() -> str:
    require_service("Prometheus", "127.0.0.1", PROMETHEUS_PORT, "make up")
    if not PROMETHEUS_TARGETS.is_dir():
        pytest.fail(f"{PROMETHEUS_TARGETS} is missing: start Prometheus with `make up`")
    return PROMETHEUS_URL


def prometheus_get(url: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def scrape_interval_s(url: str) -> float:
    """The running server's global scrape interval (1 s for prometheus.sh's copy)."""
    config = yaml.safe_load(prometheus_get(url, "/api/v1/status/config")["yaml"])
    text = str(config["global"]["scrape_interval"])
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise AssertionError(f"unexpected scrape_interval {text!r}")


def edit_targets(job: str, edit: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrites ``targets/<job>.json`` atomically (Prometheus re-reads it on change)."""
    path = PROMETHEUS_TARGETS / f"{job}.json"
    groups = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(edit(groups), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


class Feeder(threading.Thread):
    """Moves every metric of a worker, a gateway and a bridge, as running ones would."""

    def __init__(self, worker: WorkerMetrics, gateway: GatewayMetrics, bridge: BridgeMetrics):
        super().__init__(daemon=True, name="metrics-feeder")
        self.worker, self.gateway, self.bridge = worker, gateway, bridge
        self.stopped = threading.Event()
        self.committed = 0

    def step(self) -> None:
        w, g, b = self.worker, self.gateway, self.bridge
        now = time.time()
        self.committed += 40
        w.input_messages.labels(INFERENCE_TOPIC, "0").inc(40)
        w.observe_partitions(
            [(INFERENCE_TOPIC, 0, self.committed, self.committed + 25)], {(INFERENCE_TOPIC, 0): now}
        )
        w.rebalances.inc()
        w.watermark_lag.labels("lineage").set(3.0)
        w.batch_duration.labels("lineage").observe(0.02)
        w.outputs.labels(KPI_TOPIC).inc(16)
        w.dead_letters.labels("lineage", "VALIDATION_FAILED").inc()
        w.flush_duration.labels("clickhouse").observe(0.05)
        w.rows_written.labels("kpi_values").inc(16)
        w.last_flush.labels("clickhouse").set(now)
        w.clickhouse_errors.labels("clickhouse", "unavailable").inc()
        w.backpressure.labels("clickhouse").set(0)
        w.open_studies.set(120)
        w.kpi_state.labels("day_panes").set(48)
        w.breaches_open.labels("WARNING", "alert-ppv-low").set(1)
        g.messages.labels("hl7", "accepted").inc()
        g.request_duration.labels("hl7").observe(0.004)
        g.dead_letters.labels("gateway", "VALIDATION_FAILED").inc()
        b.breaches.labels("OPEN").inc()
        b.posts.labels("ok").inc()
        b.last_post.set(now)
        b.group_lag.labels(DEFAULT_APP_ID, REPORT_TOPIC, "0").set(25)

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.step()


@dataclass(frozen=True)
class ScrapedProcesses:
    worker_instance: str
    token: str
    feeder: Feeder


@pytest.fixture(scope="module")
def scraped(prometheus_url: str) -> Iterator[ScrapedProcesses]:
    """A worker, a gateway and a bridge registry, served and scraped until the end."""
    token = uuid.uuid4().hex[:12]
    worker, gateway, bridge = WorkerMetrics(), GatewayMetrics(), BridgeMetrics()
    feeder = Feeder(worker, gateway, bridge)
    feeder.step()
    with ExitStack() as stack:
        instances = {}
        for job, metrics in [
            ("imgov-worker", worker),
            ("imgov-gateway", gateway),
            ("imgov-alerts", bridge),
        ]:
            server = serve_metrics(metrics.registry, "127.0.0.1", 0)
            stack.callback(server.close)
            instance = f"127.0.0.1:{server.port}"
            instances[job] = instance
            group = {"targets": [instance], "labels": {"imgov_test": token}}
            edit_targets(job, lambda groups, g=group: [*groups, g])
            stack.callback(
                edit_targets,
                job,
                lambda groups: [
                    g for g in groups if g.get("labels", {}).get("imgov_test") != token
                ],
            )
        feeder.start()
        stack.callback(feeder.join, 5)
        stack.callback(feeder.stopped.set)
        deadline = time.monotonic() + 60
        up: list[Any] = []
        while time.monotonic() < deadline:
            up = prometheus_get(
                prometheus_url, "/api/v1/query", query=f'up{{imgov_test="{token}"}} == 1'
            )["result"]
            if len(up) == len(instances):
                break
            time.sleep(0.5)
        assert len(up) == len(instances), f"Prometheus did not scrape {instances}: {up}"
        yield ScrapedProcesses(instances["imgov-worker"], token, feeder)


def latest(series: list[dict[str, Any]]) -> float:
    """The last value of the first series of a range query's result."""
    return float(series[0]["values"][-1][1])


@pytest.mark.timeout(180)
def test_every_promql_query_returns_data(
    prometheus_url: str,
    scraped: ScrapedProcesses,
    record_property: Callable[[str, object], None],
) -> None:
    scrape_s = scrape_interval_s(prometheus_url)
    # Rates need two scrapes inside $__rate_interval after the counters first moved:
    # wait until every query has data (a few scrape intervals), not for a fixed time.
    deadline = time.monotonic() + 60
    while True:
        now = time.time()
        results = check_prometheus_queries(
            prometheus_url,
            time_from_s=now - 300,
            time_to_s=now,
            variables={"instance": scraped.worker_instance},
            scrape_interval_s=scrape_s,
            interval_s=5,
        )
        empty = [key for key, result in results.items() if not result]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(scrape_s)
    assert empty == [], f"no data from {empty}"
    assert len(results) == len(
        [q for q in dashboard_queries() if q.datasource_type != CLICKHOUSE_TYPE]
    )
    assert scraped.worker_instance in results["$instance"]
    record_property(
        "measured", f"prometheus series per query: { {k: len(v) for k, v in results.items()} }"
    )

    # The panels show this worker's numbers, not just any data.
    lag = results["Consumer lag by topic (worker) [A]"]
    assert [s["metric"]["topic"] for s in lag] == [INFERENCE_TOPIC]
    assert latest(lag) == 25
    assert latest(results["Time since last flush [A]"]) < 30
    assert latest(results["Input rate by topic [A]"]) > 0
    (rebalances,) = results["Rebalances in range [A]"]
    assert float(rebalances["value"][1]) > 0
