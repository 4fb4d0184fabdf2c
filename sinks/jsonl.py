"""A JSON Lines sink: one file per output kind, the field names of DESIGN §4-§6.

``imgov replay --out DIR`` writes through it: ``lineage.jsonl`` (every revision),
``kpi.jsonl`` (every emitted KPI value), ``breach.jsonl``, ``review.jsonl`` and
``dlq.jsonl``. Bytes (a dead letter's original key and value) are written as base64.
Accepted input events are not written: the input files already hold them.

Records are written in batches as they come (``batch_records``), so a replay of any
length holds at most one batch: memory is bounded by the batch, never by history.
``flush`` writes the rest and flushes the files. Serialisation is orjson's (compact,
UTF-8, the shortest float that reads back exactly, so ``1e-7`` rather than Python's
``1e-07``); a KPI value, the bulk of the output, is serialised straight from its
fields, without a ``model_dump``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel

from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from sinks.base import Output

__all__ = [
    "DEFAULT_BATCH_RECORDS",
    "FILE_NAMES",
    "JsonLinesSink",
    "kpi_to_json",
    "record_to_json",
]

FILE_NAMES: dict[type, str] = {
    LineageRecord: "lineage.jsonl",
    KpiValue: "kpi.jsonl",
    Breach: "breach.jsonl",
    ReviewCandidate: "review.jsonl",
    DeadLetter: "dlq.jsonl",
}

DEFAULT_BATCH_RECORDS = 2000
"""Records held before they are written (a few MB)."""


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def record_to_json(record: Output) -> bytes:
    """Returns one output record as a compact, deterministic JSON line (no newline).

    A model's fields in their order, as ``model_dump`` gives them: orjson writes enums
    by value and tuples as arrays itself; bytes and nested models go through
    ``_default``.
    """
    return orjson.dumps(record.__dict__, default=_default)


def kpi_to_json(value: KpiValue) -> bytes:
    """``record_to_json`` of a KPI value (the encoder a KPI process is given)."""
    return record_to_json(value)


class JsonLinesSink:
    """Appends output records to one JSON Lines file per kind under ``directory``.

    Args:
        directory: where the files are created (truncated when they exist).
        batch_records: records held before they are written.
    """

    def __init__(self, directory: Path, *, batch_records: int = DEFAULT_BATCH_RECORDS) -> None:
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[type, IO[bytes]] = {
            kind: (directory / name).open("wb") for kind, name in FILE_NAMES.items()
        }
        self._batch = batch_records
        self._pending: list[Output] = []

    def add(self, record: Output) -> None:
        if type(record) in self._files:
            self._pending.append(record)
            if len(self._pending) >= self._batch:
                self._write()

    kpi_encoder = staticmethod(kpi_to_json)
    """How ``add_encoded_kpis`` wants KPI values encoded (by a process that has them)."""

    def add_encoded_kpis(self, lines: list[bytes]) -> None:
        """Writes KPI values already encoded with ``kpi_encoder``, in their order."""
        if lines:
            lines.append(b"")
            self._files[KpiValue].write(b"\n".join(lines))

    def flush(self) -> None:
        self._write()
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()

    def _write(self) -> None:
        lines: dict[type, list[bytes]] = {}
        for record in self._pending:
            lines.setdefault(type(record), []).append(record_to_json(record))
        self._pending.clear()
        for kind, batch in lines.items():
            batch.append(b"")
            self._files[kind].write(b"\n".join(batch))
