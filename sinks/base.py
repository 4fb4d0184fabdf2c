"""The ``Sink`` protocol: where pipeline outputs go (STYLE rule 8).

A sink receives output records one at a time with ``add`` and makes them durable with
``flush``. The runtime calls ``flush`` before it commits input offsets (live) or before
it reports success (replay), so a sink may buffer freely between flushes. Writes are
idempotent: every record carries its identity and revision, so a redelivery rewrites
the same row.

A sink that cannot take more data right now raises ``SinkBackpressureError`` from
``add`` or ``flush``; the caller waits ``retry_after_s`` and calls ``flush`` again
without losing what was added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, runtime_checkable

from schemas.errors import ImgovError
from schemas.events import AlertEvent, InferenceEvent, ReportEvent
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate

__all__ = ["EncodedKpiSink", "Output", "Sink", "SinkBackpressureError", "SinkError"]

Output: TypeAlias = (
    InferenceEvent
    | AlertEvent
    | ReportEvent
    | LineageRecord
    | KpiValue
    | Breach
    | ReviewCandidate
    | DeadLetter
)
"""Everything a sink can receive: accepted input events (the audit ``event_log``) and
every output record of the core."""


class SinkError(ImgovError):
    """A sink failed to write; what was added since the last successful flush is kept."""


class SinkBackpressureError(SinkError):
    """The sink is full or its backend is down: retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@runtime_checkable
class Sink(Protocol):
    """A destination for pipeline outputs."""

    def add(self, record: Output) -> None:
        """Buffers one record.

        Raises:
            SinkBackpressureError: the buffer is full; flush, then add again.
        """

    def flush(self) -> None:
        """Makes every record added so far durable; returns only when it is.

        Raises:
            SinkBackpressureError: the backend is unavailable; nothing was lost.
            SinkError: the backend rejected the data.
        """

    def close(self) -> None:
        """Flushes and releases the sink's resources."""


@runtime_checkable
class EncodedKpiSink(Protocol):
    """A sink that also takes KPI values encoded elsewhere, the bulk of the output.

    The parallel replay (``streams.replay.parallel``) computes KPI windows in a second
    process, which encodes each value with the sink's ``kpi_encoder`` (a module-level
    function, so it travels by name) and sends the results: bytes or row tuples cost
    far less to move between processes than the records themselves.
    """

    kpi_encoder: Callable[[KpiValue], Any]

    def add_encoded_kpis(self, payloads: list[Any]) -> None:
        """Adds KPI values encoded by ``kpi_encoder``, in their order."""
