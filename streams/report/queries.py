"""The compliance queries: the SQL that reproduces the report's numbers from the audit tables.

The report ends with them and the demo prints them, so a committee member can re-run
any figure with ``imgov query`` (a unit test runs each one on the demo's tables).
"""

from __future__ import annotations

from html import escape

from streams.report.data import ReportData

__all__ = ["COMPLIANCE_QUERIES", "queries_section"]


COMPLIANCE_QUERIES: tuple[tuple[str, str], ...] = (
    (
        "Scorecard of one site",
        "SELECT algorithm_name, algorithm_version, studies, tp, fp, fn, tn, "
        "round(ppv, 3) AS ppv, round(sensitivity, 3) AS sens, round(specificity, 3) AS spec, "
        "round(discordance_rate, 3) AS discordance, review_candidates "
        "FROM model_scorecard WHERE site_id = 'site-02' AND algorithm_version IS NOT NULL "
        "ORDER BY algorithm_name",
    ),
    (
        "Open breaches with their evidence",
        "SELECT severity, rule_id, site_id, algorithm_name, window_size, "
        "toDate(toDateTime(intDiv(window_end_ms, 1000), 'UTC')) AS until, "
        "round(value, 3) AS value, round(threshold, 3) AS threshold, evidence "
        "FROM breaches_open ORDER BY severity, rule_id, site_id, algorithm_name, window_end_ms",
    ),
    (
        "Final 30-day alert PPV per site (the last 30 days of data)",
        "SELECT site_id, algorithm_name, numerator AS tp, denominator AS alerts_labelled, "
        "round(value, 3) AS ppv, round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high "
        "FROM kpi_final WHERE kpi = 'alert_ppv' AND window_size = '30d' "
        "AND algorithm_version = '*' AND site_id != '*' AND window_end_ms = "
        "(SELECT max(window_end_ms) FROM kpi_final WHERE kpi = 'ai_positive_rate' "
        "AND window_size = '1d') ORDER BY algorithm_name, site_id",
    ),
    (
        "Every revision of one study's lineage (pick a study_uid from the review candidates)",
        "SELECT algorithm_name, revision, outcome, completeness, ai_result, report_label, "
        "alert_final_state, length(event_ids) AS events, substring(record_hash, 1, 12) AS hash "
        "FROM lineage_history WHERE study_uid = '<study_uid>' "
        "ORDER BY algorithm_name, revision",
    ),
)
"""(title, SQL) of the queries the report and the demo print for compliance users."""


def queries_section(hint: str, data: ReportData) -> str:
    """Returns the last section: each query after ``hint``, the command that runs it.

    The lineage query names the most recent review candidate, when there is one.
    """
    study = data.review_examples[0]["study_uid"] if data.review_examples else "<study_uid>"
    items = "".join(
        f'<h3>{escape(title)}</h3><pre>{escape(hint)} "{escape(sql.replace("<study_uid>", study))}"'
        "</pre>"
        for title, sql in COMPLIANCE_QUERIES
    )
    return f"""
<h2>Reproduce these numbers</h2>
<p class="caption">The audit tables answer every figure above. Run, for example:</p>{items}"""
