"""An in-memory sink for tests and for callers that want the outputs as lists."""

from __future__ import annotations

from collections import defaultdict

from sinks.base import Output

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps every flushed record, grouped by record type, in arrival order."""

    def __init__(self) -> None:
        self._pending: list[Output] = []
        self.flushed: dict[type, list[Output]] = defaultdict(list)
        self.flush_count = 0

    def add(self, record: Output) -> None:
        self._pending.append(record)

    def flush(self) -> None:
        for record in self._pending:
            self.flushed[type(record)].append(record)
        self._pending.clear()
        self.flush_count += 1

    def close(self) -> None:
        self.flush()

    def records(self, kind: type) -> list[Output]:
        """Returns the flushed records of one type (e.g. ``LineageRecord``)."""
        return list(self.flushed.get(kind, ()))
