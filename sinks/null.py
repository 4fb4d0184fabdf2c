"""A sink that keeps nothing: ``imgov replay`` without an output, for its summary alone."""

from __future__ import annotations

from sinks.base import Output

__all__ = ["NullSink"]


class NullSink:
    """Discards every record (the replay's statistics still count them)."""

    def add(self, record: Output) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
