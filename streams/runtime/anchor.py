"""The live worker's audit checkpoints (DESIGN §8): its lineage heads, signed, stored.

Every ``audit_checkpoint_interval_s`` of processing time, and when the worker stops,
the lineage runner has a :class:`CheckpointAnchor` make one checkpoint per input
partition it owns (``streams.core.lineage.anchor``), between two batches, holding the
runner's lock: the study states it reads are then exactly what the batches so far
wrote durably (their rows flushed to ClickHouse, their state to the changelog, in the
commit protocol of ``streams.runtime.agents``), so every head a checkpoint names is a
row already in ``lineage_history``.

Per partition, in order:

1. the heads are read from the state store (each value carries its partition) and
   the next sequence is found (the greatest stored for the partition, plus one: a
   partition that moved between workers keeps counting up);
2. the checkpoint is signed and written to ClickHouse, heads first
   (``sinks.clickhouse.checkpoints``), in this anchor's own thread and connection;
3. the checkpoints (without heads) are produced to the compacted topic
   ``governance.audit.checkpoint.v1``, keyed by partition.

A failure is logged and the checkpoint skipped: the pipeline goes on, the next one
covers the same heads, and ``imgov audit verify`` reports a stale checkpoint only as
old, never as wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from schemas.records import AuditCheckpoint, ChainHead
from sinks.clickhouse.checkpoints import last_sequence, write_checkpoint
from sinks.query import QueryBackend
from streams.core.lineage.anchor import CheckpointKeyring, heads_of_study, make_checkpoint
from streams.core.lineage.codec import decode_state
from streams.core.lineage.store import RESERVED_PREFIX, MappingStudyStore

if TYPE_CHECKING:
    from streams.runtime.staged_store import PartitionedStore

__all__ = ["CheckpointAnchor", "heads_by_partition"]

log = logging.getLogger("imgov.worker")

_RESERVED = RESERVED_PREFIX.encode()


def heads_by_partition(
    items: Iterable[tuple[bytes, bytes]], partitions: Iterable[int]
) -> dict[int, list[ChainHead]]:
    """Returns the chain heads of the study states in ``items``, per partition.

    Args:
        items: ``(key, value)`` of a :class:`PartitionedStore` (values start with their
            2-byte partition); keys that are not studies are skipped.
        partitions: the partitions wanted; each is in the result, with no heads if the
            store has none of it.
    """
    wanted = set(partitions)
    heads: dict[int, list[ChainHead]] = defaultdict(list)
    for partition in wanted:
        heads[partition] = []
    for raw_key, raw in items:
        if raw_key.startswith(_RESERVED):
            continue
        partition = int.from_bytes(raw[:2], "big")
        if partition not in wanted:
            continue
        key = MappingStudyStore.decode_key(raw_key.decode())
        heads[partition].extend(heads_of_study(key, decode_state(raw[2:])))
    return dict(heads)


class CheckpointAnchor:
    """Makes, stores and publishes the audit checkpoints of the lineage stage.

    Args:
        keyring: the checkpoint keys; the current one signs.
        connect: opens the ClickHouse connection the anchor uses (in its own thread).
        interval_s: processing time between two checkpoints.
        wall_clock_ms: the time a checkpoint says it was made.
        clock: monotonic seconds (pacing).
    """

    def __init__(
        self,
        *,
        keyring: CheckpointKeyring,
        connect: Callable[[], QueryBackend],
        interval_s: float,
        wall_clock_ms: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keyring = keyring
        self._connect = connect
        self._backend: QueryBackend | None = None
        self.interval_s = interval_s
        self._wall_clock_ms = wall_clock_ms
        self._clock = clock
        self._last_s = clock()
        self._sequences: dict[int, int] = {}
        self._partitions: frozenset[int] = frozenset()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-checkpoint")
        self.written = 0
        """Checkpoints written since start."""

    def due(self) -> bool:
        """Whether ``interval_s`` passed since the last checkpoint (or the start)."""
        return self._clock() - self._last_s >= self.interval_s

    async def checkpoint(
        self,
        store: PartitionedStore,
        partitions: Iterable[int],
        watermark_ms: int | None,
        evictable_before_ms: int | None,
    ) -> list[AuditCheckpoint]:
        """Steps 1-2 of the module docstring for ``partitions``; returns the checkpoints.

        Called with the runner's lock held (no batch runs). A ClickHouse failure is
        logged and yields no checkpoint.
        """
        owned = frozenset(partitions)
        self._last_s = self._clock()
        if owned != self._partitions:
            self._sequences.clear()  # another worker may have counted on meanwhile
            self._partitions = owned
        if not owned:
            return []
        loop = asyncio.get_running_loop()
        try:
            made = await loop.run_in_executor(
                self._executor, self._make, store, owned, watermark_ms, evictable_before_ms
            )
        except Exception as exc:  # a checkpoint must never stop the pipeline
            self._backend = None  # reconnect next time
            log.error("audit checkpoint of partitions %s failed: %s", sorted(owned), exc)
            return []
        self.written += len(made)
        return made

    def _make(
        self,
        store: PartitionedStore,
        owned: frozenset[int],
        watermark_ms: int | None,
        evictable_before_ms: int | None,
    ) -> list[AuditCheckpoint]:
        if self._backend is None:
            self._backend = self._connect()
        backend = self._backend
        now_ms = self._wall_clock_ms()
        made = []
        for partition, heads in sorted(heads_by_partition(store.items(), owned).items()):
            sequence = self._sequences.get(partition)
            if sequence is None:
                sequence = last_sequence(backend, partition)
            checkpoint = make_checkpoint(
                heads,
                partition=partition,
                sequence=sequence + 1,
                created_at_ms=now_ms,
                watermark_ms=watermark_ms,
                evictable_before_ms=evictable_before_ms,
                key=self._keyring.current,
            )
            write_checkpoint(backend, checkpoint, sorted(heads))
            self._sequences[partition] = checkpoint.sequence
            made.append(checkpoint)
        return made

    def close(self) -> None:
        """Releases the thread and the connection."""
        self._executor.shutdown(wait=True)
        if self._backend is not None:
            self._backend.close()
            self._backend = None
