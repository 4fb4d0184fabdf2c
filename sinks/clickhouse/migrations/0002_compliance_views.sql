-- Compliance views over the audit tables (DESIGN §6, §8). The read-only `compliance`
-- user queries these. Every view reads its ReplacingMergeTree table with FINAL or
-- argMax, so rows that were delivered twice and not merged yet are never counted twice.
-- 18.16 has no window functions, no CTEs and no CREATE OR REPLACE VIEW: a later change
-- to a view is a new migration doing DROP TABLE IF EXISTS <view> then CREATE VIEW.
--
-- argMax over a Nullable column skips NULLs (on 18.16 and on 26.x), which would return
-- an older non-NULL value; the views therefore take argMax of a tuple (never NULL
-- itself) and unpack it.

-- The latest revision of every lineage key. FINAL collapses redelivered copies of a
-- revision; the IN keeps the highest revision per key.
CREATE VIEW IF NOT EXISTS lineage_latest AS
SELECT *
FROM lineage_history FINAL
WHERE (site_id, study_uid, algorithm_name, finding_code, revision) IN
(
    SELECT site_id, study_uid, algorithm_name, finding_code, max(revision)
    FROM lineage_history
    GROUP BY site_id, study_uid, algorithm_name, finding_code
);

-- The final value of every KPI window: among its final rows, the highest revision.
-- Current (non-final) rows are ignored whatever their order of arrival.
CREATE VIEW IF NOT EXISTS kpi_final AS
SELECT
    kpi,
    window_size,
    site_id,
    algorithm_name,
    algorithm_version,
    finding_code,
    window_start_ms,
    toDateTime(intDiv(window_start_ms, 1000), 'UTC') AS window_start,
    tupleElement(latest, 1) AS window_end_ms,
    tupleElement(latest, 2) AS numerator,
    tupleElement(latest, 3) AS denominator,
    tupleElement(latest, 4) AS value,
    tupleElement(latest, 5) AS ci_low,
    tupleElement(latest, 6) AS ci_high,
    tupleElement(latest, 7) AS p50,
    tupleElement(latest, 8) AS p90,
    tupleElement(latest, 9) AS revision
FROM
(
    SELECT
        kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code, window_start_ms,
        argMax(
            tuple(window_end_ms, numerator, denominator, value, ci_low, ci_high, p50, p90, revision),
            revision
        ) AS latest
    FROM kpi_values
    WHERE final = 1
    GROUP BY kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code, window_start_ms
);

-- Breaches that opened and have not resolved.
CREATE VIEW IF NOT EXISTS breaches_open AS
SELECT
    breach_id, rule_id, kpi, severity, window_size, window_start_ms, window_end_ms,
    site_id, algorithm_name, algorithm_version, finding_code, value, threshold, evidence
FROM kpi_breaches FINAL
WHERE state = 'OPEN'
  AND breach_id NOT IN (SELECT breach_id FROM kpi_breaches WHERE state = 'RESOLVED');

-- One row per site x algorithm x version x finding, over the latest lineage revisions
-- (rows without an inference, e.g. NO_AI_RESULT, have algorithm_version NULL):
-- the Assess-AI style scorecard (confusion counts, PPV, sensitivity, specificity,
-- discordance) and the workflow measures of DESIGN §5. Ratios are NULL when their
-- denominator is 0; durations are exact medians / p90 in milliseconds. The alert
-- response SLA is the default `response_sla` of 15 minutes (900000 ms); the KPI stream
-- carries the configured one.
CREATE VIEW IF NOT EXISTS model_scorecard AS
SELECT
    site_id,
    algorithm_name,
    algorithm_version,
    finding_code,
    count() AS records,
    uniqExact(study_uid) AS studies,
    countIf(inference_status IS NOT NULL) AS inferences,
    countIf(outcome = 'AI_FAILED') AS ai_failed,
    countIf(ifNull(ai_result = 'POSITIVE', 0)) AS ai_positive,
    countIf(ifNull(inference_status = 'SUCCEEDED', 0)) AS ai_succeeded,
    countIf(outcome = 'TRUE_POSITIVE') AS tp,
    countIf(outcome = 'FALSE_POSITIVE') AS fp,
    countIf(outcome = 'FALSE_NEGATIVE') AS fn,
    countIf(outcome = 'TRUE_NEGATIVE') AS tn,
    countIf(outcome = 'INDETERMINATE') AS indeterminate,
    countIf(outcome = 'AWAITING_REPORT') AS awaiting_report,
    countIf(outcome = 'NO_AI_RESULT') AS no_ai_result,
    tp + fp + fn + tn AS labelled,
    if(inferences > 0, ai_failed / inferences, NULL) AS inference_failure_rate,
    if(ai_succeeded > 0, ai_positive / ai_succeeded, NULL) AS ai_positive_rate,
    if(tp + fp > 0, tp / (tp + fp), NULL) AS ppv,
    if(tp + fn > 0, tp / (tp + fn), NULL) AS sensitivity,
    if(tn + fp > 0, tn / (tn + fp), NULL) AS specificity,
    if(labelled > 0, (fp + fn) / labelled, NULL) AS discordance_rate,
    countIf(review_candidate = 1) AS review_candidates,
    countIf(alert_raised_at_ms IS NOT NULL) AS alerts_raised,
    countIf(ifNull(alert_first_response_at_ms - alert_raised_at_ms <= 900000, 0)) AS alerts_responded_in_sla,
    countIf(alert_first_response_at_ms IS NOT NULL) AS alerts_responded,
    countIf(alert_dismissed = 1) AS alerts_dismissed,
    countIf(alert_escalated = 1) AS alerts_escalated,
    if(alerts_raised > 0, alerts_responded_in_sla / alerts_raised, NULL) AS alert_response_rate,
    if(alerts_responded > 0, alerts_dismissed / alerts_responded, NULL) AS dismiss_rate,
    if(alerts_raised > 0, alerts_escalated / alerts_raised, NULL) AS escalation_rate,
    quantileExact(0.5)(time_to_result_ms) AS time_to_result_p50_ms,
    quantileExact(0.5)(time_to_response_ms) AS time_to_response_p50_ms,
    quantileExact(0.5)(report_tat_ms) AS report_tat_p50_ms,
    quantileExact(0.9)(report_tat_ms) AS report_tat_p90_ms,
    countIf(addendum_count > 0) AS reports_with_addendum,
    min(updated_at_ms) AS first_updated_at_ms,
    max(updated_at_ms) AS last_updated_at_ms
FROM lineage_latest
GROUP BY site_id, algorithm_name, algorithm_version, finding_code;
