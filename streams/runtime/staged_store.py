"""State of the live worker: a partitioned byte store, and writes staged until commit.

The live worker keeps its state (lineage study states, the KPI agent's rows and
snapshots) in Faust tables, each backed by a changelog topic. Faust writes a table's
changelog on every assignment (``table[key] = value``), at a moment of its choosing;
our commit protocol needs the opposite order (DESIGN §7):

1. outputs of a batch are computed (state changes only *staged* here),
2. the sink is flushed and the output topics are written,
3. the staged state is written: to the local store, then to the changelog, whose
   producer is flushed,
4. only then are the input messages acknowledged (Faust commits them later).

A crash before step 3 leaves the state as it was before the batch, so the redelivered
batch produces the same outputs again (idempotent rows). A crash between 3 and 4
leaves state that already contains the batch: the join ignores duplicate events and
the KPI agent ignores revisions it has applied, so nothing is counted twice.

Every stored value is prefixed with the 2-byte partition its key belongs to, so a
change made without an input message at hand (expiry) goes to the right changelog
partition.

:class:`StagedMapping` is the ``MutableMapping[str, bytes]`` the core's
``MappingStudyStore`` (and the KPI stage) use; :class:`PartitionedStore` is the
backend protocol; :class:`DictPartitionedStore` is the in-memory backend for tests,
and :class:`FaustTableStore` (``streams.runtime.faust_store``) is the live one.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Protocol

__all__ = ["DictPartitionedStore", "PartitionedStore", "StagedMapping", "StagedWrite"]

StagedWrite = tuple[int, bytes, bytes | None]
"""(partition, key, stored value or None for a deletion)."""


class PartitionedStore(Protocol):
    """A key -> bytes store whose keys each live in one partition."""

    def get(self, key: bytes) -> bytes | None:
        """Returns the stored value (with its partition prefix), None if absent."""

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Yields every stored (key, value) of the partitions this worker owns."""

    def write(self, writes: list[StagedWrite]) -> None:
        """Applies writes durably (local store, then changelog); see the module doc."""


class DictPartitionedStore:
    """An in-memory :class:`PartitionedStore` (unit tests); records every write."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.log: list[StagedWrite] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self.data.items()))

    def write(self, writes: list[StagedWrite]) -> None:
        for partition, key, value in writes:
            self.log.append((partition, key, value))
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def _prefix(partition: int) -> bytes:
    return partition.to_bytes(2, "big")


class StagedMapping(MutableMapping[str, bytes]):
    """A mapping over a :class:`PartitionedStore` whose writes wait for :meth:`commit`.

    Reads see staged writes. A new key is placed in the partition set by
    :meth:`use_partition` (the partition of the input being processed); an existing
    key stays in the partition it was stored in.
    """

    def __init__(self, store: PartitionedStore) -> None:
        self._store = store
        self._staged: dict[str, bytes | None] = {}
        self._partition_of: dict[str, int] = {}
        self._current: int | None = None

    def use_partition(self, partition: int | None) -> None:
        """Sets the partition for keys created from now on (None: creating fails)."""
        self._current = partition

    @property
    def staged(self) -> int:
        """Number of keys changed since the last commit."""
        return len(self._staged)

    def _load(self, key: str) -> bytes | None:
        raw = self._store.get(key.encode())
        if raw is None:
            return None
        self._partition_of.setdefault(key, int.from_bytes(raw[:2], "big"))
        return raw[2:]

    def __getitem__(self, key: str) -> bytes:
        value = self._staged[key] if key in self._staged else self._load(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        if key not in self._partition_of and key not in self._staged:
            self._load(key)
        if key not in self._partition_of:
            if self._current is None:
                raise RuntimeError(f"no partition for new state key {key!r}")
            self._partition_of[key] = self._current
        self._staged[key] = value

    def set_last(self, key: str, value: bytes) -> None:
        """Stages ``key`` after every write staged so far (moved there if staged before).

        A partition's writes reach its changelog in staging order: a record *about*
        the other writes (the offsets they apply) is staged last, so a crash never
        leaves it in the changelog without them.
        """
        self._staged.pop(key, None)
        self[key] = value

    def __delitem__(self, key: str) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self._staged[key] = None

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for raw_key, raw in self._store.items():
            key = raw_key.decode()
            self._partition_of.setdefault(key, int.from_bytes(raw[:2], "big"))
            seen.add(key)
            if self._staged.get(key, b"") is not None:
                yield key
        for key, value in list(self._staged.items()):
            if key not in seen and value is not None:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def take_writes(self) -> list[StagedWrite]:
        """Returns the staged writes (in staging order) and forgets them."""
        writes: list[StagedWrite] = []
        for key, value in self._staged.items():
            partition = self._partition_of[key]
            stored = None if value is None else _prefix(partition) + value
            writes.append((partition, key.encode(), stored))
        self._staged.clear()
        if len(self._partition_of) > 200_000:
            self._partition_of.clear()  # a cache: reloaded from the store when needed
        return writes

    def commit(self) -> int:
        """Writes the staged changes to the store; returns how many."""
        writes = self.take_writes()
        if writes:
            self._store.write(writes)
        return len(writes)

    def discard(self) -> None:
        """Forgets staged changes (the batch failed and will be redelivered)."""
        self._staged.clear()

    def forget_partitions(self) -> None:
        """Drops cached placement (after a rebalance)."""
        self._partition_of.clear()
