"""The JSON Lines and in-memory sinks keep every record, in order, only once flushed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from schemas.records import DeadLetter, DeadLetterReason, KpiValue
from schemas.units import DAY_MS
from sinks.base import Sink
from sinks.jsonl import JsonLinesSink
from sinks.memory import MemorySink


def _kpi(start: int) -> KpiValue:
    return KpiValue(
        kpi="alert_ppv",
        window_size="1d",
        window_start_ms=start,
        window_end_ms=start + DAY_MS,
        site_id="*",
        algorithm_name="ich-detect",
        algorithm_version="*",
        finding_code="ICH",
        numerator=3,
        denominator=4,
        value=0.75,
        final=True,
        revision=1,
    )


def test_both_sinks_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemorySink(), Sink)
    assert isinstance(JsonLinesSink(tmp_path), Sink)


def test_jsonl_sink_writes_on_flush_and_keeps_bytes(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path)
    letter = DeadLetter(
        reason=DeadLetterReason.UNDECODABLE, message="not Avro", value=b"\xff\x00garbage"
    )
    sink.add(_kpi(0))
    sink.add(letter)
    sink.add(_kpi(DAY_MS))
    assert (tmp_path / "kpi.jsonl").read_text() == ""
    sink.close()

    kpi_lines = [json.loads(line) for line in (tmp_path / "kpi.jsonl").read_text().splitlines()]
    assert [line["window_start_ms"] for line in kpi_lines] == [0, DAY_MS]
    assert kpi_lines[0]["value"] == 0.75 and kpi_lines[0]["final"] is True
    (dead,) = [json.loads(line) for line in (tmp_path / "dlq.jsonl").read_text().splitlines()]
    assert dead["reason"] == "UNDECODABLE"
    assert base64.b64decode(dead["value"]) == b"\xff\x00garbage"
    assert (tmp_path / "lineage.jsonl").read_text() == ""


def test_memory_sink_groups_by_type_after_flush() -> None:
    sink = MemorySink()
    sink.add(_kpi(0))
    assert sink.records(KpiValue) == []
    sink.flush()
    assert sink.records(KpiValue) == [_kpi(0)]


def test_jsonl_sink_writes_full_batches_as_they_come(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path, batch_records=3)
    for day in range(7):
        sink.add(_kpi(day * DAY_MS))
    # Two batches of three are out of the sink's memory; the seventh waits for flush.
    sink._files[KpiValue].flush()
    assert len((tmp_path / "kpi.jsonl").read_text().splitlines()) == 6
    sink.close()
    lines = (tmp_path / "kpi.jsonl").read_text().splitlines()
    assert [json.loads(line)["window_start_ms"] for line in lines] == [
        day * DAY_MS for day in range(7)
    ]


def test_a_kpi_value_is_written_as_its_validated_model_dumps_it(tmp_path: Path) -> None:
    value = _kpi(0).model_copy(update={"p_value": 8.4e-07, "ci_low": 0.25})
    sink = JsonLinesSink(tmp_path)
    sink.add(value)
    sink.close()
    (line,) = (tmp_path / "kpi.jsonl").read_text().splitlines()
    assert json.loads(line) == json.loads(value.model_dump_json())
    assert list(json.loads(line)) == list(KpiValue.model_fields)


def test_null_sink_takes_everything_and_keeps_nothing() -> None:
    from sinks.null import NullSink

    sink = NullSink()
    assert isinstance(sink, Sink)
    sink.add(_kpi(0))
    sink.flush()
    sink.close()
    assert not hasattr(sink, "__dict__") or not vars(sink)
