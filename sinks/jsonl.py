"""A JSON Lines sink: one file per output kind, the field names of DESIGN §4-§6.

``imgov replay --out DIR`` writes through it: ``lineage.jsonl`` (every revision),
``kpi.jsonl`` (every emitted KPI value), ``breach.jsonl``, ``review.jsonl`` and
``dlq.jsonl``. Bytes (a dead letter's original key and value) are written as base64.
Accepted input events are not written: the input files already hold them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import IO, Any

from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord, ReviewCandidate
from sinks.base import Output

__all__ = ["FILE_NAMES", "JsonLinesSink", "record_to_json"]

FILE_NAMES: dict[type, str] = {
    LineageRecord: "lineage.jsonl",
    KpiValue: "kpi.jsonl",
    Breach: "breach.jsonl",
    ReviewCandidate: "review.jsonl",
    DeadLetter: "dlq.jsonl",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def record_to_json(record: Output) -> str:
    """Returns one output record as a compact, deterministic JSON line (no newline)."""
    doc = _jsonable(record.model_dump(mode="python"))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str)


class JsonLinesSink:
    """Appends output records to one JSON Lines file per kind under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._files: dict[type, IO[str]] = {
            kind: (directory / name).open("w", encoding="utf-8")
            for kind, name in FILE_NAMES.items()
        }
        self._pending: list[Output] = []

    def add(self, record: Output) -> None:
        if type(record) in self._files:
            self._pending.append(record)

    def flush(self) -> None:
        for record in self._pending:
            self._files[type(record)].write(record_to_json(record) + "\n")
        self._pending.clear()
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        self.flush()
        for handle in self._files.values():
            handle.close()
