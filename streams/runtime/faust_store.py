"""A Faust table as a :class:`~streams.runtime.staged_store.PartitionedStore`.

Faust writes a table's changelog inside ``table[key] = value``, using the partition of
the message being processed (a context variable). The worker writes state only after
the sink flushed (``staged_store``), outside any message context, so this adapter
writes the local store (RocksDB via rocksdict, or memory) per explicit partition and
sends the changelog itself with ``Table.send_changelog``. The local write comes first:
Faust records the changelog offset in RocksDB once the send is acknowledged, and a
restart replays the changelog from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from streams.runtime.staged_store import StagedWrite

__all__ = ["FaustTableStore"]


class FaustTableStore:
    """Reads and writes one Faust table (raw bytes keys and values) by partition."""

    def __init__(self, table: Any) -> None:
        self._table = table

    @property
    def _store(self) -> Any:
        return self._table.data

    def _rocks(self) -> bool:
        return hasattr(self._store, "_db_for_partition")

    def get(self, key: bytes) -> bytes | None:
        store = self._store
        if self._rocks():
            found = store._get_bucket_for_key(key)
            return None if found is None else bytes(found[1])
        value = store.data.get(key)
        return None if value is None else bytes(value)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        store = self._store
        if self._rocks():
            for key, value in list(store._iteritems()):
                yield bytes(key), bytes(value)
        else:
            for key, value in list(store.data.items()):
                if value is not None:
                    yield bytes(key), bytes(value)

    def write(self, writes: list[StagedWrite]) -> None:
        store = self._store
        rocks = self._rocks()
        for partition, key, value in writes:
            if rocks:
                db = store._db_for_partition(partition)
                if value is None:
                    db.delete(key)
                    store._key_index.pop(key, None)
                else:
                    db.put(key, value)
                    store._key_index[key] = partition
            elif value is None:
                store.data.pop(key, None)
                store._key_partition.pop(key, None)
            else:
                store.data[key] = value
                store._key_partition[key] = partition
        for partition, key, value in writes:
            if value is None:
                self._table.send_changelog(partition, key, None, value_serializer="raw")
            else:
                self._table.send_changelog(partition, key, value)
