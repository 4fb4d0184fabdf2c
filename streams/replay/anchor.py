"""The audit checkpoint of an offline replay (DESIGN §8), written at the end of the run.

A replay is one partition (``input_partition`` 0) with one join, so its checkpoint
holds the newest revision of every lineage key the join still holds when the input
ends (``ReplayStats.heads``, collected by ``replay(collect_heads=True)``). It is written
beside the run's audit tables, so ``imgov audit verify`` on the demo's chDB directory
sees a deleted newest revision too. Replaying into a directory that already holds
checkpoints continues their sequence.
"""

from __future__ import annotations

from schemas.records import AuditCheckpoint
from sinks.clickhouse.checkpoints import last_sequence, write_checkpoint
from sinks.query import QueryBackend
from streams.core.lineage.anchor import CheckpointKeyring, make_checkpoint
from streams.replay.driver import ReplayStats

__all__ = ["REPLAY_PARTITION", "write_replay_checkpoint"]

REPLAY_PARTITION = 0
"""The partition an offline replay's checkpoint is filed under."""


def write_replay_checkpoint(
    stats: ReplayStats, backend: QueryBackend, keyring: CheckpointKeyring, now_ms: int
) -> AuditCheckpoint:
    """Signs the heads of a finished replay and stores the checkpoint behind ``backend``.

    Raises:
        ValueError: the replay did not collect its heads.
        QueryError: the tables cannot be read or written.
    """
    if stats.heads is None:
        raise ValueError("replay(collect_heads=True) collects the heads a checkpoint needs")
    checkpoint = make_checkpoint(
        stats.heads,
        partition=REPLAY_PARTITION,
        sequence=last_sequence(backend, REPLAY_PARTITION) + 1,
        created_at_ms=now_ms,
        watermark_ms=stats.watermark_ms,
        evictable_before_ms=stats.evictable_before_ms,
        key=keyring.current,
    )
    write_checkpoint(backend, checkpoint, sorted(stats.heads))
    return checkpoint
