-- imgov audit tables (DESIGN §6). Applied by `imgov db migrate`, by ChdbSink on open.
--
-- Runs UNCHANGED on ClickHouse 18.16, on current servers and on chDB 26.x, so it uses
-- only what 18.16 has: no DateTime64 (DateTime('UTC') beside an Int64 `*_ms` column),
-- no Map, no TTL, no LowCardinality, no CODEC, no Nullable column in a sorting key.
-- Table names are unqualified: the runner connects to the target database first.
--
-- Every table is a ReplacingMergeTree keyed by the identity of what it stores, so a
-- redelivered row (at-least-once input) rewrites the same row. Until a background merge
-- runs, duplicates are physically present: read with FINAL or argMax (the views in 0002
-- do). Enum-valued fields are String (not Enum8): a new enum symbol in a record must
-- never make an insert fail and stall the pipeline.
--
-- The `DateTime('UTC')` twins of `*_ms` columns are DEFAULT expressions computed by the
-- server from the `_ms` value; writers never send them. Retention is by partition
-- (month of the column named in PARTITION BY), never TTL:
--   ALTER TABLE imgov.event_log DROP PARTITION 202401
-- (`imgov db drop-before YYYYMM` does it for every table).

CREATE TABLE IF NOT EXISTS event_log
(
    site_id            String,
    study_uid          String,
    event_id           String,
    event_type         String,             -- inference | alert | report
    occurred_at_ms     Int64,
    occurred_at        DateTime('UTC') DEFAULT toDateTime(intDiv(occurred_at_ms, 1000), 'UTC'),
    algorithm_name     Nullable(String),   -- inference and alert events
    algorithm_version  Nullable(String),
    finding_code       Nullable(String),
    status             String,             -- inference status, alert state or report status
    payload            String,             -- the event as JSON, identifiers pseudonymised (§8)
    source_topic       String,             -- Kafka topic, or the file path for offline replay
    source_partition   Int32,              -- -1 when unknown
    source_offset      Int64,              -- Kafka offset, or the line number; -1 when unknown
    schema_id          Nullable(Int32),    -- writer schema id of an Avro input
    ingested_at_ms     Int64,
    ingested_at        DateTime('UTC') DEFAULT toDateTime(intDiv(ingested_at_ms, 1000), 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (site_id, study_uid, event_id);

-- One row per lineage revision, every field of LineageRecord under its own name, so
-- `imgov audit verify` can rebuild each record and recompute its hash chain (§8).
-- Reads for verification must not use FINAL: two different rows claiming the same key
-- and revision are evidence, and stay visible until a merge collapses them.
CREATE TABLE IF NOT EXISTS lineage_history
(
    site_id                            String,
    study_uid                          String,
    algorithm_name                     String,
    finding_code                       String,
    algorithm_version                  Nullable(String),
    modality                           Nullable(String),
    body_part                          Nullable(String),
    manufacturer                       Nullable(String),
    patient_ref                        Nullable(String),
    accession_ref                      Nullable(String),
    inference_event_id                 Nullable(String),
    inference_status                   Nullable(String),
    failure_reason                     Nullable(String),
    score                              Nullable(Float64),
    threshold                          Nullable(Float64),
    ai_result                          Nullable(String),
    study_available_at_ms              Nullable(Int64),
    inference_completed_at_ms          Nullable(Int64),
    alert_raised_at_ms                 Nullable(Int64),
    alert_delivered_at_ms              Nullable(Int64),
    alert_first_response_at_ms         Nullable(Int64),
    alert_final_state                  Nullable(String),
    alert_dismissed                    UInt8,
    alert_escalated                    UInt8,
    alert_channel                      Nullable(String),
    report_id                          Nullable(String),
    report_prelim_at_ms                Nullable(Int64),
    report_final_at_ms                 Nullable(Int64),
    report_status                      Nullable(String),
    report_label                       Nullable(String),
    label_method                       Nullable(String),
    exam_completed_at_ms               Nullable(Int64),
    addendum_count                     UInt32,
    critical_result_communicated_at_ms Nullable(Int64),
    outcome                            String,
    time_to_result_ms                  Nullable(Int64),
    time_to_alert_ms                   Nullable(Int64),
    time_to_response_ms                Nullable(Int64),
    report_tat_ms                      Nullable(Int64),
    interacted                         UInt8,
    review_candidate                   UInt8,
    completeness                       String,
    event_ids                          Array(String),
    revision                           UInt32,
    updated_at_ms                      Int64,
    updated_at                         DateTime('UTC') DEFAULT toDateTime(intDiv(updated_at_ms, 1000), 'UTC'),
    prev_hash                          Nullable(String),
    record_hash                        String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(updated_at)
ORDER BY (site_id, study_uid, algorithm_name, finding_code, revision);

-- KPI values. The same window is emitted several times: current (final = 0) values,
-- then once final (final = 1), then again with revision + 1 for each late change.
-- `version` = revision * 2 + final orders those emissions so the latest one wins
-- deterministically: a final row beats every current row of its revision, a later
-- revision beats both. (Versioning by revision alone would let a current and a final
-- row of the same revision replace each other in whatever order parts merge.) Current
-- rows of one revision tie; the last written wins, and they are provisional anyway.
-- MATERIALIZED: computed by the server, never sent, so it cannot disagree.
CREATE TABLE IF NOT EXISTS kpi_values
(
    kpi                String,
    window_size        String,
    site_id            String,             -- '*' = all sites
    algorithm_name     String,
    algorithm_version  String,             -- '*' = all versions
    finding_code       String,
    window_start_ms    Int64,
    window_start       DateTime('UTC') DEFAULT toDateTime(intDiv(window_start_ms, 1000), 'UTC'),
    window_end_ms      Int64,
    numerator          Nullable(Float64),
    denominator        Nullable(Float64),
    value              Nullable(Float64),
    ci_low             Nullable(Float64),
    ci_high            Nullable(Float64),
    p50                Nullable(Float64),
    p90                Nullable(Float64),
    final              UInt8,
    revision           UInt32,
    version            UInt64 MATERIALIZED toUInt64(revision) * 2 + final
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code, window_start_ms);

-- Breaches opening and resolving: one row per (breach_id, state).
CREATE TABLE IF NOT EXISTS kpi_breaches
(
    breach_id          String,
    state              String,             -- OPEN | RESOLVED
    rule_id            String,
    kpi                String,
    severity           String,             -- WARNING | CRITICAL
    window_size        String,
    window_start_ms    Int64,
    window_start       DateTime('UTC') DEFAULT toDateTime(intDiv(window_start_ms, 1000), 'UTC'),
    window_end_ms      Int64,
    site_id            String,
    algorithm_name     String,
    algorithm_version  String,
    finding_code       String,
    value              Nullable(Float64),
    threshold          Nullable(Float64),
    evidence           String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (breach_id, state);

-- Dead letters with the original bytes (a ClickHouse String holds any bytes). Keyed by
-- where the input came from (Kafka topic/partition/offset; for offline replay the file
-- path and line number) plus reason and the SHA-256 of the value, so a redelivery
-- collapses and letters without a source (-1) stay apart when their bytes differ.
CREATE TABLE IF NOT EXISTS rejected_events
(
    source_topic       String,             -- '' when unknown
    source_partition   Int32,              -- -1 when unknown
    source_offset      Int64,              -- -1 when unknown
    reason             String,
    value_sha256       String,
    message            String,
    key                Nullable(String),
    value              String,
    header_keys        Array(String),
    header_values      Array(Nullable(String)),
    event_id           Nullable(String),
    study_uid          Nullable(String),
    received_at_ms     Int64,              -- when the source saw it, else when the sink did
    received_at        DateTime('UTC') DEFAULT toDateTime(intDiv(received_at_ms, 1000), 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset, reason, value_sha256);

-- Studies for secondary reading (AI positive, report absent, nobody interacted); the
-- latest revision per lineage key wins.
CREATE TABLE IF NOT EXISTS review_candidates
(
    site_id            String,
    study_uid          String,
    algorithm_name     String,
    finding_code       String,
    algorithm_version  Nullable(String),
    score              Nullable(Float64),
    report_id          Nullable(String),
    report_final_at_ms Nullable(Int64),
    report_final_at    DateTime('UTC') DEFAULT toDateTime(intDiv(ifNull(report_final_at_ms, 0), 1000), 'UTC'),
    revision           UInt32,
    record_hash        String,
    reason             String
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(report_final_at)
ORDER BY (site_id, study_uid, algorithm_name, finding_code);
