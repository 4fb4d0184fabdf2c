"""Poison batches on the real ClickHouse 18.16 server: rows it refuses, mixed into good ones.

Two kinds of refusal, both real (``sinks.refusals``):

* client-side: clickhouse-driver cannot serialise a value for its column (a revision of
  2**32 in ``UInt32``: ``TypeMismatchError``, code 53; a lone surrogate in a ``String``:
  ``UnicodeEncodeError``) and nothing reaches the server;
* server-side: the server evaluates a column's DEFAULT expression per row and throws
  (``throwIf``, code 395), here added to the test's own database only.

Each test works in its own database ``imgov_test_<uuid>``, dropped afterwards.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from clickhouse_driver import Client

from schemas.records import LineageRecord
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend
from tests.integration.conftest import CLICKHOUSE_HOST, CLICKHOUSE_PORT
from tests.unit.sinks import factory

pytestmark = pytest.mark.clickhouse


@pytest.fixture
def backend(clickhouse_writer: Client) -> Iterator[ClickHouseBackend]:
    name = f"imgov_test_{uuid.uuid4().hex[:12]}"
    clickhouse_writer.execute(f"CREATE DATABASE {name}")
    settings = ClickHouseSettings(
        host=CLICKHOUSE_HOST, port=CLICKHOUSE_PORT, user="imgov", database=name
    )
    opened = ClickHouseBackend.connect(settings)
    try:
        migrate(opened)
        yield opened
    finally:
        opened.close()
        clickhouse_writer.execute(f"DROP DATABASE IF EXISTS {name}")


def _letters(backend: ClickHouseBackend) -> list[tuple[str, dict[str, object], str, str]]:
    """``(message, row, key, table header)`` of the SINK_REJECTED rows of rejected_events."""
    _, rows = backend.execute(
        "SELECT message, value, key, header_values[indexOf(header_keys, 'table')] "
        "FROM rejected_events FINAL WHERE reason = 'SINK_REJECTED' ORDER BY key"
    )
    return [(m, json.loads(v), k, t) for m, v, k, t in rows]


def test_rows_the_driver_cannot_serialise_become_dead_letters(
    backend: ClickHouseBackend,
) -> None:
    records = factory.lineage_records(400)
    too_big = records[123].model_copy(update={"revision": 2**32})  # UInt32
    surrogate = records[321].model_copy(update={"modality": "CT\ud800"})  # not UTF-8
    batch = [*records[:123], too_big, *records[124:321], surrogate, *records[322:]]
    sink = ClickHouseSink(backend, max_batch_rows=10_000)
    for record in batch:
        sink.add(record)

    started = time.monotonic()
    sink.flush()  # returns: the refused rows are not retried
    assert time.monotonic() - started < 20

    _, count = backend.execute("SELECT count() FROM lineage_history")
    assert count == [(398,)]
    letters = _letters(backend)
    assert len(letters) == 2
    by_study = {
        row["study_uid"]: (message, row, key, table) for message, row, key, table in letters
    }
    message, row, key, table = by_study[too_big.study_uid]
    assert table == "lineage_history"
    assert re.match(r"lineage_history refused the row \(ref \w+\): insert into lineage_", message)
    assert "Code: 53" in message and "revision" in message
    assert row["revision"] == 2**32
    assert key.startswith(f"{too_big.site_id}|{too_big.study_uid}|")
    message, row, _, _ = by_study[surrogate.study_uid]
    assert "UnicodeEncodeError" in message and row["modality"] == "CT\ud800"
    (refusal,) = sink.take_refusals()
    assert refusal.refused == 2 and refusal.written == 398
    assert refusal.inserts <= 2 * 11  # about log2(400) + 2 per refused row


def test_rows_the_server_refuses_become_dead_letters(backend: ClickHouseBackend) -> None:
    # The server computes DEFAULT columns per row on insert: this one throws for 2 rows.
    backend.execute(
        "ALTER TABLE lineage_history "
        "ADD COLUMN refuse UInt8 DEFAULT toUInt8(throwIf(revision > 1000))"
    )
    records = factory.lineage_records(300)
    refused = {40: 1001, 250: 5000}
    batch: list[LineageRecord] = [
        r.model_copy(update={"revision": refused[i]}) if i in refused else r
        for i, r in enumerate(records)
    ]
    sink = ClickHouseSink(backend)
    for record in batch:
        sink.add(record)
    sink.flush()

    _, stored = backend.execute("SELECT count(), max(revision) FROM lineage_history")
    assert stored == [(298, max(r.revision for r in records if r.revision <= 1000))]
    letters = _letters(backend)
    assert sorted(int(row["revision"]) for _, row, _, _ in letters) == [1001, 5000]  # type: ignore[call-overload]
    for message, _, _, _ in letters:
        assert "Code: 395" in message and "throwIf" in message
    (refusal,) = sink.take_refusals()
    assert refusal.table == "lineage_history" and refusal.refused == 2
    assert refusal.error is not None and "Code: 395" in refusal.error

    # A redelivery of the same batch ends the same way (the letters are keyed rows).
    for record in batch:
        sink.add(record)
    sink.flush()
    _, rows = backend.execute(
        "SELECT count() FROM rejected_events FINAL WHERE reason = 'SINK_REJECTED'"
    )
    assert rows == [(2,)]
