"""The queries of the Grafana dashboard (infra/grafana), as Grafana would send them.

No Grafana runs here: the tests read the dashboard JSON, take every query out of it
(panel targets and templating variables), expand it as Grafana and the data source
plugins would, and run the result against the real Prometheus and ClickHouse servers.

Expansion follows two steps, in the order Grafana applies them:

1. Template variables, in the browser: the dashboard's own (``$site``, ``${site}``,
   ``[[site]]``, ``${site:singlequote}``) and Grafana's globals ``$__from``, ``$__to``,
   ``$__interval``, ``$__interval_ms``, ``$__range``, ``$__range_s``, ``$__range_ms``
   and, for Prometheus, ``$__rate_interval``. A single value is substituted verbatim
   (the ClickHouse plugin's formatter quotes only multi-value lists).
2. For ClickHouse, the macros of the grafana-clickhouse-datasource plugin, in its backend
   (pkg/macros/macros.go): ``$__timeFilter(col)`` becomes
   ``col >= toDateTime(<from s>) AND col <= toDateTime(<to s>)``, ``$__fromTime`` and
   ``$__toTime`` become ``toDateTime(<s>)``, ``$__dateFilter(col)`` compares with
   ``toDate('YYYY-MM-DD')``, ``$__interval_s`` is the interval in seconds. The
   millisecond macros and ``$__timeInterval`` are expanded too, with what the plugin
   emits (``fromUnixTimestamp64Milli``, ``toStartOfInterval``), which ClickHouse 18.16
   does not have: the dashboard must not use them (tests/unit/test_grafana_dashboard.py).

Anything left that looks like a variable or a macro is an error: a panel that names a
variable the dashboard does not define would show nothing in Grafana.

``check_prometheus_queries`` runs every PromQL query of the dashboard against a
Prometheus server and returns what each returned; the tests assert on it.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.paths import REPO_ROOT

__all__ = [
    "CLICKHOUSE_TYPE",
    "DASHBOARD",
    "PROMETHEUS_TYPE",
    "DashboardQuery",
    "PrometheusQueryError",
    "UnresolvedVariableError",
    "check_prometheus_queries",
    "dashboard_queries",
    "expand",
    "format_duration",
    "prometheus_label_values",
    "resolve_prometheus_variables",
]

DASHBOARD = REPO_ROOT / "infra" / "grafana" / "dashboards" / "imgov.json"
PROMETHEUS_TYPE = "prometheus"
CLICKHOUSE_TYPE = "grafana-clickhouse-datasource"

DEFAULT_INTERVAL_S = 15.0
"""Grafana's ``$__interval`` depends on the panel's width and time range; the tests fix
it. 15 s is the scrape interval of infra/prometheus/prometheus.yml (and of the
provisioned Prometheus data source's ``timeInterval``)."""


class UnresolvedVariableError(ValueError):
    """A query names a variable or macro that Grafana would leave unexpanded."""


class PrometheusQueryError(RuntimeError):
    """Prometheus refused a query (bad PromQL, unknown function) or did not answer."""


@dataclass(frozen=True, slots=True)
class DashboardQuery:
    """One query of the dashboard.

    Attributes:
        title: the panel's title, or ``variable <name>`` for a templating variable.
        ref_id: the target's refId (``var`` for a variable).
        datasource_uid: the uid of the data source the query runs on.
        datasource_type: ``prometheus`` or ``grafana-clickhouse-datasource``.
        query: the raw text: PromQL ``expr`` or ClickHouse ``rawSql``.
        instant: a Prometheus instant query (evaluated once, at the range's end).
        format: the ClickHouse target's format: ``time_series`` or ``table``.
        variable: the templating variable's name, for a variable query.
    """

    title: str
    ref_id: str
    datasource_uid: str
    datasource_type: str
    query: str
    instant: bool = False
    format: str = "table"
    variable: str | None = None

    @property
    def key(self) -> str:
        """A unique, readable name: ``<panel title> [<refId>]`` or ``$<variable>``."""
        return f"${self.variable}" if self.variable else f"{self.title} [{self.ref_id}]"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included (a collapsed row holds its own)."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _target_text(target: Mapping[str, Any]) -> str | None:
    for field in ("expr", "rawSql"):
        if isinstance(target.get(field), str) and target[field].strip():
            return str(target[field])
    return None


def _variable_text(variable: Mapping[str, Any]) -> str | None:
    query = variable.get("query")
    if isinstance(query, Mapping):  # newer editors store an object
        query = query.get("query") or query.get("rawSql")
    return query if isinstance(query, str) and query.strip() else None


def _format_name(target: Mapping[str, Any]) -> str:
    """The sqlds format of a ClickHouse target: 0 (or "time_series") is a time series."""
    fmt = target.get("format")
    return "time_series" if fmt in (0, "time_series", "timeseries") else "table"


def dashboard_queries(path: Path = DASHBOARD) -> list[DashboardQuery]:
    """Returns every query of the dashboard at ``path``: panel targets, then variables.

    A target without its own data source uses its panel's. Targets without query text
    (none in the dashboard; an empty target in Grafana runs nothing) are skipped.

    Raises:
        ValueError: a target or variable names no data source uid.
    """
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    found: list[DashboardQuery] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            text = _target_text(target)
            if text is None:
                continue
            source = target.get("datasource") or panel.get("datasource") or {}
            if not source.get("uid"):
                raise ValueError(f"panel {panel.get('title')!r} has a target without datasource")
            found.append(
                DashboardQuery(
                    title=panel.get("title", ""),
                    ref_id=target.get("refId", "A"),
                    datasource_uid=source["uid"],
                    datasource_type=source.get("type", ""),
                    query=text,
                    instant=bool(target.get("instant")) and not target.get("range"),
                    format=_format_name(target),
                )
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        text = _variable_text(variable)
        source = variable.get("datasource") or {}
        if text is None:
            continue
        if not source.get("uid"):
            raise ValueError(f"variable {variable.get('name')!r} has no datasource")
        found.append(
            DashboardQuery(
                title=f"variable {variable['name']}",
                ref_id="var",
                datasource_uid=source["uid"],
                datasource_type=source.get("type", ""),
                query=text,
                variable=variable["name"],
            )
        )
    return found


# --- expansion ---------------------------------------------------------------------------

# Grafana's variable syntax (public/app/features/templating/template_srv.ts): $name,
# [[name]] or [[name:format]], ${name} or ${name:format}. \w+ is greedy, so
# `$__timeFilter_ms` is one name, never `$__timeFilter` followed by `_ms`.
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")
_MACRO = re.compile(r"\$__(\w+)(?:\(([^)]*)\))?")


def format_duration(seconds: float) -> str:
    """``15.0`` -> ``15s``, ``0.5`` -> ``500ms``: a duration PromQL and Grafana accept."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(round(seconds * 1000), 1)}ms"


def _globals(
    datasource_type: str,
    time_from_s: float,
    time_to_s: float,
    interval_s: float,
    scrape_interval_s: float,
) -> dict[str, str]:
    range_s = time_to_s - time_from_s
    values = {
        "__from": str(int(time_from_s * 1000)),
        "__to": str(int(time_to_s * 1000)),
        "__interval": format_duration(interval_s),
        "__interval_ms": str(int(interval_s * 1000)),
        "__range": format_duration(math.ceil(range_s)),
        "__range_s": str(math.ceil(range_s)),
        "__range_ms": str(int(range_s * 1000)),
    }
    if datasource_type == PROMETHEUS_TYPE:
        # Grafana's rule: at least four scrapes, and at least one interval plus a scrape.
        rate = max(interval_s + scrape_interval_s, 4 * scrape_interval_s)
        values["__rate_interval"] = format_duration(rate)
    return values


def _formatted(name: str, value: str, fmt: str | None) -> str:
    if fmt in (None, "raw", "text"):
        return value
    if fmt == "singlequote":
        return "'" + value.replace("'", "\\'") + "'"
    if fmt == "sqlstring":
        return "'" + value.replace("'", "''") + "'"
    if fmt == "doublequote":
        return '"' + value.replace('"', '\\"') + '"'
    raise UnresolvedVariableError(f"format {fmt!r} of variable {name!r} is not supported here")


def _clickhouse_macro(
    name: str, args: list[str], time_from_s: float, time_to_s: float, interval_s: float
) -> str:
    """What the plugin's backend (pkg/macros/macros.go) puts in place of ``$__name(args)``."""

    def dt(seconds: float) -> str:
        return f"toDateTime({int(seconds)})"

    def dt64(seconds: float) -> str:
        return f"fromUnixTimestamp64Milli({int(seconds * 1000)})"

    def date(seconds: float) -> str:
        return f"toDate('{datetime.fromtimestamp(seconds, UTC):%Y-%m-%d}')"

    def one_arg() -> str:
        if len(args) != 1 or not args[0]:
            raise UnresolvedVariableError(f"macro $__{name} needs one argument, got {args}")
        return args[0]

    f, t = time_from_s, time_to_s
    if name == "fromTime":
        return dt(f)
    if name == "toTime":
        return dt(t)
    if name == "fromTime_ms":
        return dt64(f)
    if name == "toTime_ms":
        return dt64(t)
    if name == "timeFilter":
        col = one_arg()
        return f"{col} >= {dt(f)} AND {col} <= {dt(t)}"
    if name == "timeFilter_ms":
        col = one_arg()
        return f"{col} >= {dt64(f)} AND {col} <= {dt64(t)}"
    if name == "dateFilter":
        col = one_arg()
        return f"{col} >= {date(f)} AND {col} <= {date(t)}"
    if name in ("dateTimeFilter", "dt"):
        if len(args) != 2:
            raise UnresolvedVariableError(f"macro $__{name} needs two arguments, got {args}")
        day, time = args
        days = f"({day} >= {date(f)} AND {day} <= {date(t)})"
        return f"{days} AND ({time} >= {dt(f)} AND {time} <= {dt(t)})"
    if name == "timeInterval":
        return (
            f"toStartOfInterval(toDateTime({one_arg()}), INTERVAL {max(int(interval_s), 1)} second)"
        )
    if name == "timeInterval_ms":
        ms = max(int(interval_s * 1000), 1)
        return f"toStartOfInterval(toDateTime64({one_arg()}, 3), INTERVAL {ms} millisecond)"
    if name == "interval_s":
        return str(max(int(interval_s), 1))
    raise UnresolvedVariableError(f"$__{name} is not a macro of the ClickHouse plugin")


def expand(
    query: str,
    *,
    time_from_s: float,
    time_to_s: float,
    variables: Mapping[str, str],
    datasource_type: str = PROMETHEUS_TYPE,
    interval_s: float = DEFAULT_INTERVAL_S,
    scrape_interval_s: float = DEFAULT_INTERVAL_S,
) -> str:
    """Returns ``query`` as the server would receive it from Grafana.

    Args:
        query: a PromQL ``expr`` or a ClickHouse ``rawSql`` from the dashboard.
        time_from_s: start of the dashboard's time range, Unix seconds.
        time_to_s: its end.
        variables: the dashboard variables' current values (already formatted: a
            multi-value Prometheus variable is a regex such as ``.*``).
        datasource_type: decides which globals and macros apply.
        interval_s: ``$__interval`` (Grafana derives it from width and range).
        scrape_interval_s: the data source's scrape interval, for ``$__rate_interval``.

    Raises:
        UnresolvedVariableError: a variable, global or macro that Grafana (or the
            plugin) would not expand, or a macro called with the wrong arguments.
    """
    known = {
        **_globals(datasource_type, time_from_s, time_to_s, interval_s, scrape_interval_s),
        **variables,
    }

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5)
        if name in known:
            return _formatted(name, known[name], fmt)
        if name.startswith("__") and datasource_type == CLICKHOUSE_TYPE and fmt is None:
            return match.group(0)  # a plugin macro: step 2
        raise UnresolvedVariableError(f"{match.group(0)} is not defined")

    text = _VARIABLE.sub(variable, query)
    if datasource_type == CLICKHOUSE_TYPE:

        def macro(match: re.Match[str]) -> str:
            args = [a.strip() for a in match.group(2).split(",")] if match.group(2) else []
            return _clickhouse_macro(match.group(1), args, time_from_s, time_to_s, interval_s)

        text = _MACRO.sub(macro, text)
    return text


# --- Prometheus --------------------------------------------------------------------------

_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def _get(prometheus_url: str, path: str, params: list[tuple[str, str]]) -> Any:
    url = f"{prometheus_url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        raise PrometheusQueryError(f"{path} {params}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise PrometheusQueryError(f"{path}: {prometheus_url} did not answer: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusQueryError(f"{path} {params}: {body}")
    return body["data"]


def prometheus_label_values(
    prometheus_url: str, query: str, *, time_from_s: float, time_to_s: float
) -> list[str]:
    """Runs a Grafana ``label_values([selector,] label)`` variable query, sorted values.

    Raises:
        UnresolvedVariableError: another kind of variable query (not used here).
        PrometheusQueryError: Prometheus refused the selector.
    """
    match = _LABEL_VALUES.match(query)
    if not match:
        raise UnresolvedVariableError(f"unsupported Prometheus variable query {query!r}")
    label = match.group("label")
    params = [("start", str(time_from_s)), ("end", str(time_to_s))]
    if match.group("selector"):
        params.append(("match[]", match.group("selector").strip()))
    values = _get(prometheus_url, f"/api/v1/label/{label}/values", params)
    return sorted(str(v) for v in values)


def resolve_prometheus_variables(
    prometheus_url: str,
    *,
    time_from_s: float,
    time_to_s: float,
    overrides: Mapping[str, str] | None = None,
    path: Path = DASHBOARD,
) -> dict[str, str]:
    """The values Grafana would give the dashboard's Prometheus variables on load.

    Each variable query runs against the server, in dashboard order (a later one may
    use an earlier one). The value is the override if given, else the saved current
    value when the query offers it (All: the variable's ``allValue``), else the first
    option, as Grafana picks.

    Raises:
        AssertionError: a variable query returned no option at all.
        PrometheusQueryError: Prometheus refused a variable query.
    """
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    overrides = dict(overrides or {})
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if (variable.get("datasource") or {}).get("type") != PROMETHEUS_TYPE:
            continue
        name = variable["name"]
        query = expand(
            _variable_text(variable) or "",
            time_from_s=time_from_s,
            time_to_s=time_to_s,
            variables=values,
        )
        options = prometheus_label_values(
            prometheus_url, query, time_from_s=time_from_s, time_to_s=time_to_s
        )
        assert options, f"variable ${name}: {query} offers no value"
        current = (variable.get("current") or {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if name in overrides:
            values[name] = overrides[name]
        elif current == "$__all" and variable.get("includeAll"):
            values[name] = variable.get("allValue") or "(" + "|".join(map(re.escape, options)) + ")"
        elif current in options:
            values[name] = str(current)
        else:
            values[name] = options[0]
    return values


def check_prometheus_queries(
    prometheus_url: str,
    *,
    time_from_s: float,
    time_to_s: float,
    variables: Mapping[str, str] | None = None,
    scrape_interval_s: float = DEFAULT_INTERVAL_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    path: Path = DASHBOARD,
) -> dict[str, list[Any]]:
    """Runs every PromQL query of the dashboard; returns the result of each.

    Variables are resolved as Grafana would (``resolve_prometheus_variables``), with
    ``variables`` overriding some (e.g. ``{"instance": "127.0.0.1:9810"}``). Range
    queries run through ``/api/v1/query_range`` from ``time_from_s`` to ``time_to_s``
    with ``interval_s`` as step; instant ones through ``/api/v1/query`` at
    ``time_to_s``.

    Args:
        prometheus_url: e.g. ``http://127.0.0.1:19090``.
        time_from_s: start of the time range, Unix seconds.
        time_to_s: end of the time range.
        variables: values of dashboard variables, instead of the resolved ones.
        scrape_interval_s: the server's scrape interval (``$__rate_interval``).
        interval_s: ``$__interval`` and the range queries' step.
        path: the dashboard file.

    Returns:
        ``DashboardQuery.key`` -> the ``result`` list Prometheus returned (series of a
        range query, samples of an instant one; for a variable, its option values).
        An empty list is a query that returned no data.

    Raises:
        PrometheusQueryError: Prometheus refused a query: the message names it.
        UnresolvedVariableError: a query names an undefined variable.
    """
    resolved = resolve_prometheus_variables(
        prometheus_url,
        time_from_s=time_from_s,
        time_to_s=time_to_s,
        overrides=variables,
        path=path,
    )
    results: dict[str, list[Any]] = {}
    for query in dashboard_queries(path):
        if query.datasource_type != PROMETHEUS_TYPE:
            continue
        expr = expand(
            query.query,
            time_from_s=time_from_s,
            time_to_s=time_to_s,
            variables=resolved,
            interval_s=interval_s,
            scrape_interval_s=scrape_interval_s,
        )
        try:
            if query.variable:
                results[query.key] = prometheus_label_values(
                    prometheus_url, expr, time_from_s=time_from_s, time_to_s=time_to_s
                )
            elif query.instant:
                data = _get(
                    prometheus_url, "/api/v1/query", [("query", expr), ("time", str(time_to_s))]
                )
                results[query.key] = data["result"]
            else:
                data = _get(
                    prometheus_url,
                    "/api/v1/query_range",
                    [
                        ("query", expr),
                        ("start", str(time_from_s)),
                        ("end", str(time_to_s)),
                        ("step", str(interval_s)),
                    ],
                )
                results[query.key] = data["result"]
        except PrometheusQueryError as exc:
            raise PrometheusQueryError(f"{query.key}: {expr}: {exc}") from exc
    return results
