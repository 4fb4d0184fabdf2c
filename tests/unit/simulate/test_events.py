"""Every event is a valid contract, and lifecycles are realistic."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from schemas.codec import Codec
from schemas.events import (
    EVENT_MODELS,
    AlertEvent,
    AlertState,
    EventType,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    ReportEvent,
    ReportStatus,
)
from schemas.registry import open_registry
from schemas.validation import EventValidator
from streams.simulate.output import write_events
from streams.simulate.run import SimulationRun

_FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
_UID = re.compile(r"^1\.2\.826\.0\.1\.3680043\.10\.\d+\.\d{8}\.\d+$")


def test_every_line_validates_through_the_models(small_run: SimulationRun, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [d.event for d in small_run.deliveries]
    write_events(path, events)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(events)
    validator = EventValidator(clock=lambda: _FAR_FUTURE_MS)
    for line, original in zip(lines, events, strict=True):
        data = json.loads(line)
        model = EVENT_MODELS[EventType(data.pop("event_type"))]
        event = model.model_validate(data)
        assert event == original
        assert validator.validate(event) == event


def test_events_round_trip_through_the_avro_codec(small_run: SimulationRun) -> None:
    codec = Codec(open_registry())
    for delivery in small_run.deliveries[:300]:
        assert codec.decode_event(codec.encode(delivery.event)) == delivery.event


def test_identifiers_look_like_the_real_thing(small_run: SimulationRun) -> None:
    for delivery in small_run.deliveries:
        event = delivery.event
        assert _UID.match(event.study_uid)
        if isinstance(event, InferenceEvent | ReportEvent):
            assert event.accession_number and event.patient_id
        if isinstance(event, ReportEvent):
            assert event.interpreter_id and event.exam_completed_at_ms


def test_inference_timestamps_are_ordered(small_run: SimulationRun) -> None:
    for delivery in small_run.deliveries:
        event = delivery.event
        if isinstance(event, InferenceEvent):
            assert event.study_available_at_ms is not None
            assert event.started_at_ms is not None and event.completed_at_ms is not None
            assert event.study_available_at_ms <= event.started_at_ms <= event.completed_at_ms
            assert event.occurred_at_ms == event.completed_at_ms
            failed = event.status is not InferenceStatus.SUCCEEDED
            assert (event.score is None) is failed
            assert (event.failure_reason is not None) is failed


def test_alert_lifecycles(small_run: SimulationRun) -> None:
    inferences = {
        d.event.event_id: d.event
        for d in small_run.deliveries
        if isinstance(d.event, InferenceEvent)
    }
    alerts: dict[str, dict[str, AlertEvent]] = defaultdict(dict)
    for delivery in small_run.deliveries:
        if isinstance(delivery.event, AlertEvent):
            alerts[delivery.event.alert_id][delivery.event.event_id] = delivery.event
    assert alerts
    positives = [e for e in inferences.values() if e.result is InferenceResult.POSITIVE]
    assert len(alerts) == len(positives)
    terminal = {AlertState.ACCEPTED, AlertState.DISMISSED, AlertState.EXPIRED}
    for events in alerts.values():
        ordered = sorted(events.values(), key=lambda e: e.occurred_at_ms)
        states = [e.state for e in ordered]
        assert states[:2] == [AlertState.RAISED, AlertState.DELIVERED]
        assert states[-1] in terminal
        assert sum(s in terminal for s in states) == 1
        inference = inferences[ordered[0].inference_event_id or ""]
        assert inference.result is InferenceResult.POSITIVE
        assert ordered[0].occurred_at_ms >= inference.occurred_at_ms
        for event in ordered:
            assert (event.dismiss_reason is not None) is (event.state is AlertState.DISMISSED)
    channels = {next(iter(events.values())).channel for events in alerts.values()}
    assert len(channels) >= 3


def test_report_workflow(small_run: SimulationRun) -> None:
    truths = {t.study_uid: t for t in small_run.truths}
    reports: dict[str, dict[str, ReportEvent]] = defaultdict(dict)
    for delivery in small_run.deliveries:
        if isinstance(delivery.event, ReportEvent):
            reports[delivery.event.study_uid][delivery.event.event_id] = delivery.event
    assert len(reports) > 0.95 * len(truths)
    for study_uid, events in reports.items():
        ordered = sorted(events.values(), key=lambda e: e.occurred_at_ms)
        statuses = [e.status for e in ordered]
        final_index = statuses.index(ReportStatus.FINAL)
        assert set(statuses[:final_index]) <= {ReportStatus.PRELIMINARY}
        assert statuses.count(ReportStatus.FINAL) == 1
        assert len(ordered) - final_index <= 2  # at most one addendum
        truth = truths[study_uid]
        expected_codes = {a.finding_code for a in truth.algorithms}
        for event in ordered:
            assert {f.finding_code for f in event.findings} == expected_codes
            assert event.exam_completed_at_ms == truth.exam_completed_at_ms
            assert event.occurred_at_ms > truth.exam_completed_at_ms
            critical = event.critical_result_communicated_at_ms
            assert critical is None or critical <= event.occurred_at_ms
        final = ordered[final_index]
        if any(f.label is Label.PRESENT for f in final.findings):
            assert final.critical_result_communicated_at_ms is not None
        for addendum in ordered[final_index + 1 :]:
            assert addendum.status in {
                ReportStatus.AMENDED,
                ReportStatus.CORRECTED,
                ReportStatus.APPENDED,
            }
            if addendum.status is ReportStatus.APPENDED:
                assert addendum.parent_report_id == final.report_id
            else:
                assert addendum.report_id == final.report_id
