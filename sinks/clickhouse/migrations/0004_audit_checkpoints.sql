-- Audit checkpoints (DESIGN §8): per input partition, a signed Merkle root over the newest
-- revision (head) of every lineage key held, so that `imgov audit verify` sees a chain
-- whose newest revisions were deleted. Written by the live worker's lineage stage every
-- `audit_checkpoint_interval_s` and when it stops, and by `imgov replay --chdb` (and the
-- demo) at the end of a run (input_partition 0). The same Avro record (without the
-- heads) goes to the compacted topic governance.audit.checkpoint.v1.
--
-- One row per checkpoint. The signature covers every column but key_id and signature
-- (streams.core.lineage.anchor.signed_bytes); any edit makes it fail.
CREATE TABLE IF NOT EXISTS audit_checkpoints
(
    input_partition      Int32,
    sequence             UInt64,
    format_version       UInt16,
    created_at_ms        Int64,
    created_at           DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000), 'UTC'),
    watermark_ms         Nullable(Int64),
    evictable_before_ms  Nullable(Int64),
    head_count           UInt64,
    merkle_root          String,
    key_id               String,
    signature            String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(created_at)
ORDER BY (input_partition, sequence);

-- The heads of each checkpoint, written before its audit_checkpoints row. A partition's
-- heads are rewritten by every checkpoint, so the table is replaced by lineage key with
-- the sequence as version: it holds about one row per key (not one per key and
-- checkpoint). Readers take `WHERE input_partition = p AND sequence = s` with DISTINCT:
-- a key that left the partition keeps its older row, excluded by the sequence, and a
-- checkpoint written twice (a retry) counts once.
CREATE TABLE IF NOT EXISTS audit_checkpoint_heads
(
    input_partition  Int32,
    sequence         UInt64,
    site_id          String,
    study_uid        String,
    algorithm_name   String,
    finding_code     String,
    revision         UInt32,
    record_hash      String,
    created_at_ms    Int64,
    created_at       DateTime('UTC') DEFAULT toDateTime(intDiv(created_at_ms, 1000), 'UTC')
)
ENGINE = ReplacingMergeTree(sequence)
PARTITION BY toYYYYMM(created_at)
ORDER BY (input_partition, site_id, study_uid, algorithm_name, finding_code);
