"""What the governance report and the demo summary show, read from the audit tables.

:func:`load_report_data` runs a handful of compliance queries through a
:class:`~sinks.query.QueryBackend` (chDB or a ClickHouse server): the
``model_scorecard`` and ``lineage_latest`` views, final KPI values (``kpi_final``), the
breach history (``kpi_breaches``) and review candidates. Everything the report draws
comes from these tables, so a committee member can re-run any number in it with
``imgov query``. The queries use only what ClickHouse 18.16 has (DESIGN §6).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sinks.query import QueryBackend

__all__ = [
    "REPORT_KPIS",
    "BreachHistory",
    "KpiPoint",
    "ReportData",
    "SeriesKey",
    "load_report_data",
]

REPORT_KPIS: dict[str, tuple[str, ...]] = {
    "1d": ("discordance_rate", "ai_positive_rate"),
    "7d": (
        "alert_ppv",
        "sensitivity",
        "specificity",
        "discordance_rate",
        "score_psi",
        "alert_response_rate",
        "time_to_response",
        "report_tat_ai_positive",
        "report_tat_ai_negative",
        "coverage",
    ),
}
"""The KPI series the report plots, by window size (site level, every version)."""

SeriesKey = tuple[str, str, str, str, str]
"""(kpi, window_size, site_id, algorithm_name, finding_code)."""


@dataclass(frozen=True, slots=True)
class KpiPoint:
    """One final KPI window."""

    start_ms: int
    end_ms: int
    numerator: float | None
    denominator: float | None
    value: float | None
    ci_low: float | None
    ci_high: float | None
    p50: float | None
    p90: float | None


@dataclass(frozen=True, slots=True)
class BreachHistory:
    """One breach: the row that opened it and, if it resolved, the row that did."""

    opened: dict[str, Any]
    resolved: dict[str, Any] | None

    @property
    def is_open(self) -> bool:
        return self.resolved is None

    def __getitem__(self, name: str) -> Any:
        return self.opened[name]


@dataclass(slots=True)
class ReportData:
    """Everything the report and the summary need.

    Attributes:
        source: where the data came from (shown in the report).
        period: ``[start, end)`` epoch ms of the days with AI inferences, None if empty.
        totals: events, studies, lineage rows and revisions, KPI values, rejected inputs.
        scorecard: ``model_scorecard`` rows with an algorithm version, each with an added
            ``coverage`` (rows without AI result of the same site and model included).
        sites, models: what was seen; models as ``(algorithm_name, finding_code)``.
        series: final KPI values of ``REPORT_KPIS`` by series, in window order.
        breaches: one entry per breach, in the order they opened.
        review_counts: current review candidates per ``(site_id, algorithm_name)``.
        review_examples: the most recent current review candidates.
        turnaround: report turnaround over the period per site, model and AI result
            (``ai_result``, ``n``, ``p50_ms``, ``p90_ms``).
    """

    source: str
    period: tuple[int, int] | None = None
    totals: dict[str, int] = field(default_factory=dict)
    scorecard: list[dict[str, Any]] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    models: list[tuple[str, str]] = field(default_factory=list)
    versions: dict[str, list[str]] = field(default_factory=dict)
    series: dict[SeriesKey, list[KpiPoint]] = field(default_factory=dict)
    breaches: list[BreachHistory] = field(default_factory=list)
    review_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    review_examples: list[dict[str, Any]] = field(default_factory=list)
    turnaround: list[dict[str, Any]] = field(default_factory=list)

    @property
    def open_breaches(self) -> list[BreachHistory]:
        return [b for b in self.breaches if b.is_open]

    def points(
        self, kpi: str, window: str, site_id: str, algorithm: str, finding: str
    ) -> list[KpiPoint]:
        """Returns the final windows of one series, empty when there are none."""
        return self.series.get((kpi, window, site_id, algorithm, finding), [])


def _rows(
    backend: QueryBackend, sql: str, params: dict[str, object] | None = None
) -> list[dict[str, Any]]:
    columns, rows = backend.execute(sql, params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def _scalar(backend: QueryBackend, sql: str) -> int:
    _, rows = backend.execute(sql)
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def load_report_data(backend: QueryBackend, source: str, *, review_examples: int = 8) -> ReportData:
    """Reads the report's numbers from the audit database behind ``backend``.

    Raises:
        QueryError: a table or view is missing (not migrated) or a query failed.
    """
    data = ReportData(source=source)
    data.period = _period(backend)

    lineage = _rows(
        backend,
        "SELECT count() AS n, uniqExact(study_uid) AS studies, "
        "countIf(review_candidate = 1) AS reviews FROM lineage_latest",
    )[0]
    data.totals = {
        "events": _scalar(backend, "SELECT count() FROM event_log FINAL"),
        "studies": int(lineage["studies"]),
        "lineage_rows": int(lineage["n"]),
        "lineage_revisions": _scalar(backend, "SELECT count() FROM lineage_history"),
        "kpi_values": _scalar(backend, "SELECT count() FROM kpi_final"),
        "review_candidates": int(lineage["reviews"]),
        "rejected": _scalar(backend, "SELECT count() FROM rejected_events FINAL"),
    }

    _load_scorecard(backend, data)
    _load_series(backend, data)
    _load_breaches(backend, data)

    for row in _rows(
        backend,
        "SELECT site_id, algorithm_name, count() AS n FROM lineage_latest "
        "WHERE review_candidate = 1 GROUP BY site_id, algorithm_name",
    ):
        data.review_counts[(row["site_id"], row["algorithm_name"])] = int(row["n"])
    data.review_examples = _rows(
        backend,
        "SELECT site_id, study_uid, algorithm_name, algorithm_version, finding_code, score, "
        "threshold, report_label, report_final_at_ms, alert_channel, alert_final_state "
        "FROM lineage_latest WHERE review_candidate = 1 "
        "ORDER BY report_final_at_ms DESC, study_uid, algorithm_name LIMIT %(limit)s",
        {"limit": review_examples},
    )
    data.turnaround = _rows(
        backend,
        "SELECT site_id, algorithm_name, ai_result, count() AS n, "
        "quantileExact(0.5)(report_tat_ms) AS p50_ms, quantileExact(0.9)(report_tat_ms) AS p90_ms "
        "FROM lineage_latest WHERE report_tat_ms IS NOT NULL AND inference_status = 'SUCCEEDED' "
        "AND ai_result IN ('POSITIVE', 'NEGATIVE') "
        "GROUP BY site_id, algorithm_name, ai_result ORDER BY algorithm_name, site_id, ai_result",
    )
    return data


def _period(backend: QueryBackend, share: float = 0.25) -> tuple[int, int] | None:
    """Returns the days with AI inferences, trimmed of thin first and last days.

    A day at either end with less than ``share`` of the median daily volume (the
    stragglers of a replay, whose 1-day values rest on a handful of studies) is left
    out of the period the report plots.
    """
    _, rows = backend.execute(
        "SELECT window_start_ms, window_end_ms, sum(denominator) FROM kpi_final "
        "WHERE kpi = 'ai_positive_rate' AND window_size = '1d' AND site_id = '*' "
        "AND algorithm_version = '*' GROUP BY window_start_ms, window_end_ms "
        "ORDER BY window_start_ms"
    )
    if not rows:
        return None
    volumes = sorted(float(r[2] or 0) for r in rows)
    floor = volumes[len(volumes) // 2] * share
    full = [r for r in rows if float(r[2] or 0) >= floor] or rows
    return int(full[0][0]), int(full[-1][1])


def _load_scorecard(backend: QueryBackend, data: ReportData) -> None:
    rows = _rows(
        backend, "SELECT * FROM model_scorecard ORDER BY algorithm_name, site_id, algorithm_version"
    )
    no_ai: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        no_ai[(row["site_id"], row["algorithm_name"])] += int(row["no_ai_result"])
    models: dict[tuple[str, str], None] = {}
    sites: set[str] = set()
    versions: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        sites.add(row["site_id"])
        models[(row["algorithm_name"], row["finding_code"])] = None
        if row["algorithm_version"] is None:
            continue
        versions[row["algorithm_name"]].add(row["algorithm_version"])
        # Coverage = reported eligible rows the AI read / all reported eligible rows;
        # the unread ones have no version, so they sit in the NULL-version row.
        read = int(row["records"]) - int(row["awaiting_report"])
        missed = no_ai[(row["site_id"], row["algorithm_name"])]
        row["coverage"] = read / (read + missed) if read + missed else None
        data.scorecard.append(row)
    data.sites = sorted(sites)
    data.models = sorted(models)
    data.versions = {name: sorted(v) for name, v in versions.items()}


def _load_series(backend: QueryBackend, data: ReportData) -> None:
    for window, kpis in REPORT_KPIS.items():
        for row in _rows(
            backend,
            "SELECT kpi, site_id, algorithm_name, finding_code, window_start_ms, window_end_ms, "
            "numerator, denominator, value, ci_low, ci_high, p50, p90 FROM kpi_final "
            "WHERE window_size = %(window)s AND algorithm_version = '*' AND site_id != '*' "
            "AND has(%(kpis)s, kpi) "
            "ORDER BY kpi, site_id, algorithm_name, finding_code, window_start_ms",
            {"window": window, "kpis": list(kpis)},
        ):
            key = (row["kpi"], window, row["site_id"], row["algorithm_name"], row["finding_code"])
            data.series.setdefault(key, []).append(
                KpiPoint(
                    start_ms=int(row["window_start_ms"]),
                    end_ms=int(row["window_end_ms"]),
                    numerator=row["numerator"],
                    denominator=row["denominator"],
                    value=row["value"],
                    ci_low=row["ci_low"],
                    ci_high=row["ci_high"],
                    p50=row["p50"],
                    p90=row["p90"],
                )
            )


def _load_breaches(backend: QueryBackend, data: ReportData) -> None:
    rows = _rows(
        backend,
        "SELECT breach_id, state, rule_id, kpi, severity, window_size, window_start_ms, "
        "window_end_ms, site_id, algorithm_name, algorithm_version, finding_code, value, "
        "threshold, evidence FROM kpi_breaches FINAL ORDER BY window_end_ms, breach_id, state",
    )
    opened: dict[str, dict[str, Any]] = {}
    resolved: dict[str, dict[str, Any]] = {}
    for row in rows:
        (opened if row["state"] == "OPEN" else resolved)[row["breach_id"]] = row
    data.breaches = [BreachHistory(row, resolved.get(bid)) for bid, row in opened.items()]
