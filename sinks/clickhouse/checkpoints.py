"""Audit checkpoints in ClickHouse: ``audit_checkpoints`` and ``audit_checkpoint_heads``.

Rows in and out for both tables (migration ``0004``), through any
:class:`~sinks.query.QueryBackend` (the ClickHouse server or chDB). The checkpoints are
made and checked by ``streams.core.lineage.anchor``; this module only stores and reads
them, and trusts nothing it reads: ``imgov audit verify`` checks every signature and root.

Writes go heads first, then the checkpoint row, so a checkpoint row always has its heads
stored (a crash between the two leaves heads of a sequence without a checkpoint, which
the next checkpoint of the partition overwrites with the next sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.records import AuditCheckpoint, ChainHead
from sinks.query import QueryBackend

__all__ = [
    "CHECKPOINTS_TABLE",
    "CHECKPOINT_COLUMNS",
    "HEADS_TABLE",
    "HEAD_COLUMNS",
    "checkpoint_from_row",
    "checkpoint_row",
    "head_rows",
    "last_sequence",
    "latest_checkpoints",
    "read_heads",
    "write_checkpoint",
]

CHECKPOINTS_TABLE = "audit_checkpoints"
HEADS_TABLE = "audit_checkpoint_heads"

CHECKPOINT_COLUMNS = (
    "input_partition",
    "sequence",
    "format_version",
    "created_at_ms",
    "watermark_ms",
    "evictable_before_ms",
    "head_count",
    "merkle_root",
    "key_id",
    "signature",
)
HEAD_COLUMNS = (
    "input_partition",
    "sequence",
    "site_id",
    "study_uid",
    "algorithm_name",
    "finding_code",
    "revision",
    "record_hash",
    "created_at_ms",
)
_HEAD_READ = ", ".join(HEAD_COLUMNS[2:8])

_ROWS_PER_INSERT = 50_000


def checkpoint_row(checkpoint: AuditCheckpoint) -> tuple[object, ...]:
    """Returns the ``audit_checkpoints`` row of a checkpoint (``CHECKPOINT_COLUMNS``)."""
    c = checkpoint
    return (
        c.partition,
        c.sequence,
        c.format_version,
        c.created_at_ms,
        c.watermark_ms,
        c.evictable_before_ms,
        c.head_count,
        c.merkle_root,
        c.key_id,
        c.signature,
    )


def checkpoint_from_row(row: Sequence[object]) -> AuditCheckpoint:
    """Returns the checkpoint of an ``audit_checkpoints`` row (``CHECKPOINT_COLUMNS``)."""
    return AuditCheckpoint.model_validate(
        {
            "partition" if name == "input_partition" else name: value
            for name, value in zip(CHECKPOINT_COLUMNS, row, strict=True)
        }
    )


def head_rows(checkpoint: AuditCheckpoint, heads: Sequence[ChainHead]) -> list[tuple[object, ...]]:
    """Returns the ``audit_checkpoint_heads`` rows of a checkpoint (``HEAD_COLUMNS``)."""
    p, s, at = checkpoint.partition, checkpoint.sequence, checkpoint.created_at_ms
    return [(p, s, *head, at) for head in heads]


def write_checkpoint(
    backend: QueryBackend, checkpoint: AuditCheckpoint, heads: Sequence[ChainHead]
) -> None:
    """Stores a checkpoint: its heads, then its row (see the module docstring).

    Raises:
        QueryError: ClickHouse refused or could not be reached.
    """
    rows = head_rows(checkpoint, heads)
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        backend.insert(HEADS_TABLE, HEAD_COLUMNS, rows[start : start + _ROWS_PER_INSERT])
    backend.insert(CHECKPOINTS_TABLE, CHECKPOINT_COLUMNS, [checkpoint_row(checkpoint)])


def last_sequence(backend: QueryBackend, partition: int) -> int:
    """Returns the greatest sequence stored for ``partition`` (heads or checkpoint), 0 if none."""
    _, rows = backend.execute(
        f"SELECT max(sequence) FROM (SELECT sequence FROM {CHECKPOINTS_TABLE} "
        f"WHERE input_partition = %(p)s UNION ALL SELECT sequence FROM {HEADS_TABLE} "
        "WHERE input_partition = %(p)s)",
        {"p": partition},
    )
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def latest_checkpoints(backend: QueryBackend) -> list[AuditCheckpoint]:
    """Returns the checkpoint with the greatest sequence of every partition, by partition.

    A checkpoint stored twice (a retried write) is one row; two *different* rows
    claiming one sequence are both returned (verification then reports the bad one).
    """
    columns = ", ".join(CHECKPOINT_COLUMNS)
    # GLOBAL: in the sharded layout (sinks.clickhouse.sharded) the table is Distributed,
    # and a plain IN over it inside a query over it is refused (distributed_product_mode
    # 'deny'); GLOBAL IN computes the maxima once over all shards. On a single server
    # (and chDB) it is a plain IN.
    _, rows = backend.execute(
        f"SELECT DISTINCT {columns} FROM {CHECKPOINTS_TABLE} "
        f"WHERE (input_partition, sequence) GLOBAL IN (SELECT input_partition, max(sequence) "
        f"FROM {CHECKPOINTS_TABLE} GROUP BY input_partition) "
        "ORDER BY input_partition, signature"
    )
    return [checkpoint_from_row(row) for row in rows]


def read_heads(backend: QueryBackend, checkpoint: AuditCheckpoint) -> list[ChainHead]:
    """Returns the stored heads of a checkpoint, sorted by lineage key."""
    _, rows = backend.execute(
        f"SELECT DISTINCT {_HEAD_READ} FROM {HEADS_TABLE} "
        "WHERE input_partition = %(p)s AND sequence = %(s)s "
        "ORDER BY site_id, study_uid, algorithm_name, finding_code, revision, record_hash",
        {"p": checkpoint.partition, "s": checkpoint.sequence},
    )
    return [ChainHead(str(a), str(b), str(c), str(d), int(e), str(f)) for a, b, c, d, e, f in rows]
