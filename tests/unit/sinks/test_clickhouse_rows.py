"""Row mapping (sinks.clickhouse.rows): pure, lossless for lineage, no identifiers."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from schemas.events import AlertEvent, InferenceEvent, ReportEvent
from schemas.records import Breach, KpiValue, LineageRecord, ReviewCandidate
from sinks.clickhouse import rows
from sinks.clickhouse.buffer import RowBuffer
from sinks.clickhouse.rows import (
    EVENT_COLUMNS,
    LINEAGE_COLUMNS,
    REJECTED_COLUMNS,
    TABLE_COLUMNS,
    EventSource,
    event_payload,
    event_row,
    lineage_from_row,
    lineage_row,
    redact_identifiers,
    rejected_row,
)
from streams.core.lineage.hashchain import record_hash, verify_chain
from streams.core.lineage.pseudonym import IdentifierKind, Pseudonymiser
from tests.unit.sinks import factory
from tests.unit.sinks.strategies import lineage_records

IDENTIFIERS = ("PATIENT-123", "ACC-9", "DR-WHO", "RAD-7")


def test_row_mapping_imports_no_database_client() -> None:
    """STYLE rule 1: rows.py and buffer.py are pure."""
    for module in ("rows.py", "buffer.py"):
        source = (Path(rows.__file__).parent / module).read_text()
        imported: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        forbidden = {
            m for m in imported if m.split(".")[0] in {"clickhouse_driver", "chdb", "pyarrow"}
        }
        assert not forbidden, f"{module} imports {forbidden}"
        assert "sinks.query" not in imported


def test_every_record_field_has_a_column() -> None:
    assert set(LINEAGE_COLUMNS) == set(LineageRecord.model_fields)
    assert TABLE_COLUMNS["kpi_values"] == tuple(KpiValue.model_fields)
    assert TABLE_COLUMNS["kpi_breaches"] == tuple(Breach.model_fields)
    assert TABLE_COLUMNS["review_candidates"] == tuple(ReviewCandidate.model_fields)


@settings(max_examples=300, deadline=None)
@given(lineage_records())
def test_lineage_row_round_trips_losslessly(record: LineageRecord) -> None:
    row = lineage_row(record)
    assert len(row) == len(LINEAGE_COLUMNS)
    back = lineage_from_row(row)
    assert back == record
    assert record_hash(back) == record_hash(record)


def test_lineage_from_row_accepts_database_types_and_extra_columns() -> None:
    record = factory.lineage_records(2)[1]
    # What a database returns: lists for arrays, 0/1 for flags, an int for a whole float,
    # plus server-computed columns the record does not have.
    as_stored = {
        name: (list(v) if isinstance(v, tuple) else int(v) if isinstance(v, bool) else v)
        for name, v in zip(LINEAGE_COLUMNS, lineage_row(record), strict=True)
    }
    as_stored["threshold"] = 0 if record.threshold == 0.0 else record.threshold
    as_stored["updated_at"] = "2023-11-14 22:13:20"
    assert lineage_from_row(as_stored) == record
    assert verify_chain([lineage_from_row(as_stored), factory.lineage_records(2)[0]]) == []


def test_lineage_from_row_rejects_a_short_row() -> None:
    with pytest.raises(ValueError):
        lineage_from_row(lineage_row(factory.lineage_records(1)[0])[:-1])
    with pytest.raises(ValidationError):
        lineage_from_row({**dict.fromkeys(LINEAGE_COLUMNS), "site_id": "s"})


def test_event_row_columns_and_source() -> None:
    inference, alert, report = factory.input_events()
    source = EventSource("imaging.ai.inference.v1", 3, 99, schema_id=12)
    row = dict(zip(EVENT_COLUMNS, event_row(inference, "{}", source, 5), strict=True))
    assert row["event_type"] == "inference"
    assert (row["algorithm_name"], row["finding_code"], row["status"]) == (
        "ich-detector",
        "ICH",
        "SUCCEEDED",
    )
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "imaging.ai.inference.v1",
        3,
        99,
    )
    assert (row["schema_id"], row["ingested_at_ms"]) == (12, 5)

    alert_row = dict(zip(EVENT_COLUMNS, event_row(alert, "{}", None, 5), strict=True))
    assert alert_row["status"] == "RAISED"
    assert (
        alert_row["source_topic"],
        alert_row["source_partition"],
        alert_row["source_offset"],
    ) == (
        "",
        -1,
        -1,
    )
    report_row = dict(zip(EVENT_COLUMNS, event_row(report, "{}", None, 5), strict=True))
    assert report_row["algorithm_name"] is None and report_row["status"] == "FINAL"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_redacted_payload_has_no_direct_identifier(index: int) -> None:
    event = factory.input_events()[index]
    payload = event_payload(redact_identifiers(event))
    assert not any(identifier in payload for identifier in IDENTIFIERS)
    kind = type(event)
    assert kind.model_validate_json(payload).event_id == event.event_id


def test_pseudonymised_payload_keeps_references() -> None:
    pseudonymiser = Pseudonymiser(b"k" * 32)
    buffer = RowBuffer(clean_event=pseudonymiser.pseudonymise_event)
    for event in factory.input_events():
        buffer.add(event, now_ms=1)
    for row in buffer.rows["event_log"]:
        payload = dict(zip(EVENT_COLUMNS, row, strict=True))["payload"]
        assert not any(identifier in payload for identifier in IDENTIFIERS)
    inference_payload = json.loads(buffer.rows["event_log"][0][EVENT_COLUMNS.index("payload")])
    assert inference_payload["patient_id"] == pseudonymiser.ref(
        IdentifierKind.PATIENT, "PATIENT-123"
    )


def test_rejected_row_keeps_bytes_and_keys_a_redelivery_identically() -> None:
    framed, late = factory.dead_letters()
    row = dict(zip(REJECTED_COLUMNS, rejected_row(framed, 42), strict=True))
    assert row["value"] == framed.value and row["key"] == framed.key
    assert row["header_keys"] == ("imgov.schema_id", "empty")
    assert row["header_values"] == (b"\x00\x01", None)
    assert row["received_at_ms"] == framed.received_at_ms  # the letter's own time wins
    assert row["value_sha256"] == hashlib.sha256(framed.value).hexdigest()
    assert rejected_row(framed, 42) == rejected_row(framed, 43)

    late_row = dict(zip(REJECTED_COLUMNS, rejected_row(late, 42), strict=True))
    assert (late_row["source_topic"], late_row["source_partition"], late_row["source_offset"]) == (
        "",
        -1,
        -1,
    )
    assert late_row["received_at_ms"] == 42


def test_buffer_routes_every_kind_and_takes_and_restores() -> None:
    buffer = RowBuffer()
    records = list(factory.every_kind())
    for record in records:
        buffer.add(record, now_ms=1)  # type: ignore[arg-type]
    assert len(buffer) == len(records)
    assert {table for table, _ in buffer.pending()} == set(TABLE_COLUMNS)
    for table, table_rows in buffer.pending():
        assert all(len(row) == len(TABLE_COLUMNS[table]) for row in table_rows)
    taken = buffer.take()
    assert len(buffer) == 0 and not list(buffer.pending())
    buffer.add(factory.input_events()[0], now_ms=2)
    buffer.restore(taken)
    assert len(buffer) == len(records) + 1
    assert buffer.rows["event_log"][-1][EVENT_COLUMNS.index("event_id")] == "inf-1"
    with pytest.raises(TypeError):
        buffer.add(object(), now_ms=1)  # type: ignore[arg-type]


def test_event_types_are_all_routed() -> None:
    buffer = RowBuffer()
    for event in factory.input_events():
        assert isinstance(event, InferenceEvent | AlertEvent | ReportEvent)
        buffer.add(event, now_ms=1)
    assert len(buffer.rows["event_log"]) == 3
