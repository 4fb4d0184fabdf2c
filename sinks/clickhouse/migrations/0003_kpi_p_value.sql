-- Score drift carries the p-value of its chi-square test (KpiValue schema version 2):
-- a PSI band alone fires on noise at the sample sizes of one service. Null for every
-- other KPI, and for values written before this migration.
ALTER TABLE kpi_values ADD COLUMN p_value Nullable(Float64) AFTER p90;

-- kpi_final gains the column: 18.16 has no CREATE OR REPLACE VIEW (see 0002).
DROP TABLE IF EXISTS kpi_final;

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
    tupleElement(latest, 9) AS p_value,
    tupleElement(latest, 10) AS revision
FROM
(
    SELECT
        kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code, window_start_ms,
        argMax(
            tuple(window_end_ms, numerator, denominator, value, ci_low, ci_high, p50, p90, p_value, revision),
            revision
        ) AS latest
    FROM kpi_values
    WHERE final = 1
    GROUP BY kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code, window_start_ms
);
