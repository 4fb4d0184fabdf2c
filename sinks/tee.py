"""A sink that hands every record to several sinks (e.g. JSON Lines and chDB at once)."""

from __future__ import annotations

from collections.abc import Sequence

from sinks.base import Output, Sink

__all__ = ["TeeSink"]


class TeeSink:
    """Adds to, flushes and closes each of ``sinks`` in order."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = tuple(sinks)

    def add(self, record: Output) -> None:
        for sink in self._sinks:
            sink.add(record)

    def flush(self) -> None:
        for sink in self._sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()
