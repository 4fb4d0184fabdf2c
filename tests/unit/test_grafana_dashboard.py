"""infra/grafana: the dashboard and its provisioning files, checked without any server.

What the dashboard reads must exist: every metric a PromQL query names is in the
catalogue of ``streams.metrics`` (or is Prometheus's ``up`` or the client library's
``process_*``), every table or view a SQL query reads is created by the migrations, and
every ``$variable`` a query uses is defined. The provisioning files must give the data
sources the uids the panels name and the addresses, user and database the project's
services use. tests/integration/test_grafana_dashboard.py runs the queries themselves.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from sinks.clickhouse.settings import ClickHouseSettings
from streams.metrics import BridgeMetrics, GatewayMetrics, WorkerMetrics
from streams.paths import REPO_ROOT
from tests.integration.grafana_queries import (
    CLICKHOUSE_TYPE,
    DASHBOARD,
    PROMETHEUS_TYPE,
    DashboardQuery,
    UnresolvedVariableError,
    dashboard_queries,
    expand,
)

GRAFANA = REPO_ROOT / "infra" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "imgov.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "imgov.yml"
README = GRAFANA / "README.md"
MIGRATIONS = REPO_ROOT / "sinks" / "clickhouse" / "migrations"
USERS_XML = REPO_ROOT / "infra" / "clickhouse" / "users.xml"
PROMETHEUS_CONFIG = REPO_ROOT / "infra" / "prometheus" / "prometheus.yml"

# Plugin macros whose expansion ClickHouse 18.16 cannot run (toStartOfInterval,
# fromUnixTimestamp64Milli; see tests/integration/grafana_queries.py).
MACROS_18_16_LACKS = (
    "timeInterval",
    "timeInterval_ms",
    "timeFilter_ms",
    "fromTime_ms",
    "toTime_ms",
)

# PromQL words that are not metric names.
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def provisioned() -> dict[str, dict[str, Any]]:
    """uid -> the provisioned data source."""
    config = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    return {source["uid"]: source for source in config["datasources"]}


def metric_catalogue() -> set[str]:
    """Every series name the imgov processes export, as PromQL sees them."""
    names: set[str] = set()
    for metrics in (WorkerMetrics(), GatewayMetrics(), BridgeMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
            if family.type == "counter":
                names.update({f"{family.name}_total", f"{family.name}_created"})
            elif family.type == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_count", "_sum", "_created"))
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (function and aggregation names excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        followed_by_call = text[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group(0).lower() not in PROMQL_KEYWORDS:
            names.add(match.group(0))
    return names


def migration_relations() -> set[str]:
    """Tables and views the migrations create."""
    created = set()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        created.update(
            re.findall(r"CREATE\s+(?:TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", text, re.I)
        )
    return created


def sql_relations(sql: str) -> set[str]:
    """Tables and views a query reads (``FROM x`` / ``JOIN x``, not subqueries)."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", sql)
    return set(re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.]*)", text, re.I))


def variable_names() -> list[str]:
    return [v["name"] for v in load_dashboard()["templating"]["list"]]


def expanded(query: DashboardQuery) -> str:
    placeholder = {name: f"value_of_{name}" for name in variable_names()}
    return expand(
        query.query,
        time_from_s=1_767_225_600,
        time_to_s=1_767_830_400,
        variables=placeholder,
        datasource_type=query.datasource_type,
    )


QUERIES = dashboard_queries()
PROMQL = [q for q in QUERIES if q.datasource_type == PROMETHEUS_TYPE]
SQL = [q for q in QUERIES if q.datasource_type == CLICKHOUSE_TYPE]


# --- the dashboard ---------------------------------------------------------------------


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "imgov-operations"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"]


def test_panel_ids_are_unique_and_positions_fit_the_grid() -> None:
    panels = all_panels(load_dashboard()["panels"])
    ids = Counter(panel["id"] for panel in panels)
    assert [i for i, n in ids.items() if n > 1] == []
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_every_panel_and_target_uses_a_provisioned_data_source() -> None:
    sources = provisioned()
    for panel in all_panels(load_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} has no query"
        for ref in [panel["datasource"], *(t.get("datasource") for t in panel["targets"])]:
            if ref is None:
                continue
            assert ref["uid"] in sources, f"{panel['title']}: unknown data source {ref}"
            assert ref["type"] == sources[ref["uid"]]["type"], panel["title"]


def test_every_target_and_variable_query_is_extracted() -> None:
    dashboard = load_dashboard()
    targets = sum(len(p.get("targets", [])) for p in all_panels(dashboard["panels"]))
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(QUERIES) == targets + len(variables)
    assert {q.variable for q in QUERIES if q.variable} == {v["name"] for v in variables}
    for variable in variables:
        assert variable["datasource"]["uid"] in provisioned(), variable["name"]
    keys = Counter(q.key for q in QUERIES)
    assert [k for k, n in keys.items() if n > 1] == []


def test_both_kinds_of_panels_are_there() -> None:
    assert len(PROMQL) >= 15 and len(SQL) >= 8


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.key)
def test_every_variable_a_query_uses_is_defined(query: DashboardQuery) -> None:
    assert "$" not in expanded(query)


@pytest.mark.parametrize("query", PROMQL, ids=lambda q: q.key)
def test_promql_reads_only_catalogued_metrics(query: DashboardQuery) -> None:
    expr = expanded(query)
    if query.variable:  # label_values(<selector>, <label>): the selector names the metric
        expr = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr.strip())
    names = promql_metric_names(expr)
    assert names, f"no metric found in {query.query}"
    unknown = {n for n in names if n != "up" and not n.startswith("process_")}
    assert unknown <= metric_catalogue(), unknown - metric_catalogue()


def test_promql_metric_names_are_found() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (stage, le) (rate(a_bucket{job=~"$job"}[5m])))'
        " * on (job) group_left (process) b_info - time()"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_info"}


@pytest.mark.parametrize("query", SQL, ids=lambda q: q.key)
def test_sql_reads_tables_the_migrations_create(query: DashboardQuery) -> None:
    relations = sql_relations(query.query)
    assert relations, f"no table found in {query.query}"
    assert relations <= migration_relations(), relations - migration_relations()


@pytest.mark.parametrize("query", SQL, ids=lambda q: q.key)
def test_sql_runs_on_clickhouse_18_16(query: DashboardQuery) -> None:
    for macro in MACROS_18_16_LACKS:
        assert not re.search(rf"\$__{macro}\b", query.query), f"$__{macro} in {query.key}"
    assert not re.search(r"\bOVER\s*\(|\bWITH\b", query.query, re.I), "window function or CTE"


@pytest.mark.parametrize(
    "query", [q for q in SQL if q.format == "time_series"], ids=lambda q: q.key
)
def test_clickhouse_time_series_select_a_time_column(query: DashboardQuery) -> None:
    # The plugin (sqlds) refuses a time series frame without a field named "time".
    assert re.search(r"\bAS\s+time\b", query.query), query.query


# --- provisioning ----------------------------------------------------------------------


def test_clickhouse_data_source_is_the_projects_read_only_user() -> None:
    source = provisioned()["imgov-clickhouse"]
    assert source["type"] == CLICKHOUSE_TYPE
    data = source["jsonData"]
    defaults = ClickHouseSettings()
    assert (data["host"], int(data["port"])) == (defaults.host, defaults.port)
    assert data["protocol"] == "native"
    assert data["defaultDatabase"] == defaults.database
    users = ET.parse(USERS_XML).getroot()
    user = users.find(f"users/{data['username']}")
    assert user is not None, data["username"]
    assert user.findtext("password") == source["secureJsonData"]["password"]
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") in {"1", "2"}
    assert [d.text for d in user.findall("allow_databases/database")] == [defaults.database]


def test_prometheus_data_source_matches_the_scrape_interval() -> None:
    source = provisioned()["imgov-prometheus"]
    assert source["type"] == PROMETHEUS_TYPE
    assert source["url"].startswith("http://127.0.0.1:")
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]


def test_dashboard_provider_loads_the_folder_the_readme_mounts() -> None:
    config = yaml.safe_load(DASHBOARD_PROVIDERS.read_text(encoding="utf-8"))
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert f"infra/grafana/dashboards:{provider['options']['path']}" in README.read_text()


# --- the expansion the integration test relies on ----------------------------------------


def test_clickhouse_macros_expand_as_the_plugin_does() -> None:
    sql = "SELECT 1 FROM t WHERE $__timeFilter(ts) AND x < $__toTime AND s = '${site}'"
    assert expand(
        sql,
        time_from_s=1_700_000_000,
        time_to_s=1_700_003_600,
        variables={"site": "site-01"},
        datasource_type=CLICKHOUSE_TYPE,
    ) == (
        "SELECT 1 FROM t WHERE ts >= toDateTime(1700000000) AND ts <= toDateTime(1700003600)"
        " AND x < toDateTime(1700003600) AND s = 'site-01'"
    )


def test_prometheus_globals_expand_as_grafana_does() -> None:
    expr = "increase(m[$__range]) + rate(m[$__rate_interval]) + rate(m[$__interval])"
    text = expand(
        expr, time_from_s=0, time_to_s=3600, variables={}, interval_s=15, scrape_interval_s=15
    )
    # $__rate_interval: max($__interval + scrape interval, 4 x scrape interval).
    assert text == "increase(m[3600s]) + rate(m[60s]) + rate(m[15s])"


@pytest.mark.parametrize(
    ("query", "kind"),
    [('up{job=~"$nope"}', PROMETHEUS_TYPE), ("SELECT $__nope(x)", CLICKHOUSE_TYPE)],
)
def test_unknown_variables_and_macros_are_errors(query: str, kind: str) -> None:
    with pytest.raises(UnresolvedVariableError):
        expand(query, time_from_s=0, time_to_s=60, variables={}, datasource_type=kind)


def test_readme_names_the_files() -> None:
    text = README.read_text(encoding="utf-8")
    for path in (DASHBOARD, DATASOURCES, DASHBOARD_PROVIDERS):
        assert str(Path(path).relative_to(GRAFANA)) in text
