"""Bytes of a KPI partition's state: what the KPI stage's snapshots hold (DESIGN §8).

A snapshot is ``MAGIC``, one byte of format, then zlib-compressed JSON validated
against ``streams.core.kpi.state_schema`` (format 1). It holds data only: reading one
runs no code named by its bytes (the previous release pickled; see
``streams.runtime.legacy_snapshot`` for how those are still read), and a snapshot is
validated whole before anything is loaded from it.

The state is independent of the classes' private layout: each class writes and reads
its own part (``state()`` / ``load()``) in the schema's terms, so renaming an attribute
changes no stored byte, and a change of the schema is a new format number.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from streams.core.kpi.aggregator import KpiAggregator
from streams.core.kpi.breach import BreachEvaluator
from streams.core.kpi.state_schema import SNAPSHOT_FORMAT, KpiSnapshot
from streams.core.watermarks import WatermarkTracker

__all__ = [
    "MAGIC",
    "PartitionState",
    "SnapshotError",
    "decode_snapshot",
    "encode_snapshot",
    "load_snapshot",
    "snapshot_document",
    "validate_document",
]

MAGIC = b"imgov-kpi-state\x00"
"""The first bytes of every snapshot (a pickle starts with ``0x80``)."""

_STATE_SHAPING = ("late_horizon_ms", "duration_gamma", "psi_reference_ms", "response_sla_ms")
"""KPI settings whose change makes stored panes, buckets or references wrong (the SLA
decides what a stored revision contributed, which its next revision retracts)."""


class SnapshotError(ValueError):
    """A snapshot that cannot be restored: not one, a format this release does not
    read, a document that does not fit the schema, or settings it was not built with."""


@dataclass(slots=True)
class PartitionState:
    """A contributions partition's state, as a snapshot restores it."""

    aggregator: KpiAggregator
    breaches: BreachEvaluator | None
    upstream: WatermarkTracker
    applied: list[tuple[int, int]]
    rows: dict[str, bytes]


def snapshot_document(
    aggregator: KpiAggregator,
    breaches: BreachEvaluator | None,
    upstream: WatermarkTracker,
    applied: Sequence[tuple[int, int]],
    rows: Sequence[tuple[str, bytes]],
) -> dict[str, object]:
    """The snapshot of a partition as a JSON-ready document (format 1)."""
    return {
        "format": SNAPSHOT_FORMAT,
        "kpi_config": aggregator.config.model_dump(mode="json"),
        "aggregator": aggregator.state(),
        "breaches": None if breaches is None else breaches.state(),
        "upstream": upstream.state(),
        "applied": [tuple(r) for r in applied],
        "rows": list(rows),
    }


def encode_snapshot(document: dict[str, object]) -> bytes:
    """The bytes of a snapshot document (``snapshot_document``)."""
    rows = document["rows"]
    assert isinstance(rows, list)
    body = {**document, "rows": [(key, _b64(value)) for key, value in rows]}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return MAGIC + bytes((SNAPSHOT_FORMAT,)) + zlib.compress(text.encode(), 1)


def decode_snapshot(data: bytes) -> KpiSnapshot:
    """Validates a snapshot's bytes against its format's schema.

    Raises:
        SnapshotError: not a snapshot, an unknown format, or a document that does not
            fit the schema (the message names the first bad field).
    """
    if not data.startswith(MAGIC) or len(data) <= len(MAGIC):
        raise SnapshotError("not a KPI state snapshot (no imgov-kpi-state header)")
    version = data[len(MAGIC)]
    if version != SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"KPI state snapshot format {version}; this release reads format {SNAPSHOT_FORMAT}"
        )
    try:
        text = zlib.decompress(data[len(MAGIC) + 1 :])
    except zlib.error as exc:
        raise SnapshotError(f"KPI state snapshot is corrupt: {exc}") from None
    return validate_document(text)


def validate_document(document: bytes | str | dict[str, Any]) -> KpiSnapshot:
    """Validates a snapshot document (JSON text, or its parsed form) against the schema.

    Raises:
        SnapshotError: it does not fit (the message names the first bad field).
    """
    try:
        if isinstance(document, dict):
            return KpiSnapshot.model_validate(document)
        return KpiSnapshot.model_validate_json(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SnapshotError(
            f"KPI state snapshot does not fit format {SNAPSHOT_FORMAT}: {where}: {first['msg']} "
            f"({exc.error_count()} error(s))"
        ) from None


def load_snapshot(
    snapshot: KpiSnapshot,
    new_aggregator: Callable[[], KpiAggregator],
    new_breaches: Callable[[], BreachEvaluator | None],
) -> PartitionState:
    """Builds a partition from the current settings and fills it with a snapshot.

    Raises:
        SnapshotError: the snapshot was built with KPI settings that shape the state
            differently, or holds a KPI, window size or pane this release does not know.
    """
    aggregator = new_aggregator()
    breaches = new_breaches()
    stored = snapshot.kpi_config
    current = aggregator.config.model_dump(mode="json")
    changed = [name for name in _STATE_SHAPING if stored.get(name) != current.get(name)]
    if changed:
        detail = ", ".join(f"{n} {stored.get(n)!r} -> {current.get(n)!r}" for n in changed)
        raise SnapshotError(
            f"KPI state was built with other settings ({detail}): set them back, or rebuild "
            "the KPI state from the contributions topic (a new consumer group)"
        )
    try:
        aggregator.load(snapshot.aggregator)
        if breaches is not None and snapshot.breaches is not None:
            breaches.load(snapshot.breaches)
        up = snapshot.upstream
        upstream = WatermarkTracker.restored(
            up.allowed_lateness_ms, up.sources, up.idle, up.watermark_ms
        )
    except ValueError as exc:
        raise SnapshotError(f"KPI state snapshot does not fit this release: {exc}") from None
    return PartitionState(
        aggregator,
        breaches,
        upstream,
        [(start, end) for start, end in snapshot.applied],
        dict(snapshot.rows),
    )


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
