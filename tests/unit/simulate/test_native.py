"""The clinic's native formats (streams.simulate.native) read back by the gateway's
shipped mappings (streams.gateway): every emitted message must give the contract event
it was made from, apart from the event id, which the gateway derives from the message.

The two packages may not import each other (layers); the tests import both, so a code
table changed on one side only fails here.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner

from schemas.events import (
    AlertEvent,
    Event,
    Finding,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    LabelMethod,
    ReportEvent,
    ReportStatus,
)
from streams.cli.main import app
from streams.gateway.dicom_sr import inference_events, load_dicom_sr_mapping
from streams.gateway.fhir import load_fhir_mapping, parse_events
from streams.gateway.hl7 import load_hl7_mapping, parse_message, report_events
from streams.simulate import native
from streams.simulate.native import NativeFormat
from streams.simulate.run import SimulationRun

# The clinic's accession numbers have 17 characters, one more than DICOM's SH allows:
# pydicom warns when the gateway reads them back, and keeps them.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

HL7 = load_hl7_mapping()
FHIR = load_fhir_mapping()
DICOM_SR = load_dicom_sr_mapping()


def through_hl7(event: ReportEvent) -> ReportEvent:
    (got,) = report_events(parse_message(native.hl7_message(event)), HL7)
    return got


def through_fhir(event: AlertEvent) -> AlertEvent:
    (got,) = parse_events(json.dumps(native.fhir_communication(event)).encode(), FHIR)
    assert isinstance(got, AlertEvent)
    return got


def sr_bytes(event: InferenceEvent) -> bytes:
    buffer = BytesIO()
    native.dicom_sr(event).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def through_dicom_sr(event: InferenceEvent) -> InferenceEvent:
    (got,) = inference_events(pydicom.dcmread(BytesIO(sr_bytes(event))), DICOM_SR)
    return got


def differences(expected: Event, got: Event) -> dict[str, Any]:
    return {
        name: (getattr(expected, name), getattr(got, name))
        for name in type(expected).model_fields
        if getattr(expected, name) != getattr(got, name)
    }


def test_every_event_of_a_clinic_comes_back_from_its_native_message(
    small_run: SimulationRun,
) -> None:
    events = {d.event.event_id: d.event for d in small_run.deliveries}
    kinds = {type(e) for e in events.values()}
    assert kinds == {ReportEvent, AlertEvent, InferenceEvent}
    statuses = {e.status for e in events.values() if isinstance(e, InferenceEvent)}
    assert InferenceStatus.TIMED_OUT in statuses or InferenceStatus.FAILED in statuses
    mismatches = []
    for event in events.values():
        if isinstance(event, ReportEvent):
            got: Event = through_hl7(event)
            # The gateway keeps the raw OBR-25: the code the emitter sent for the status
            # (the simulator says C for every addendum; HL7 sends A and a local M).
            expected: Event = event.model_copy(
                update={
                    "event_id": got.event_id,
                    "hl7_result_status": native.hl7_result_status(event),
                    "findings": tuple(sorted(event.findings, key=lambda f: f.finding_code)),
                }
            )
            assert got.event_id == f"hl7:RIS:{native.hl7_control_id(event)}:1"
        elif isinstance(event, AlertEvent):
            got = through_fhir(event)
            # The alert names its inference by the id the gateway gives that one's SR.
            assert event.inference_event_id is not None
            inference = events[event.inference_event_id]
            assert isinstance(inference, InferenceEvent)
            assert got.inference_event_id == through_dicom_sr(inference).event_id
            expected = event.model_copy(
                update={"event_id": got.event_id, "inference_event_id": got.inference_event_id}
            )
        else:
            assert isinstance(event, InferenceEvent)
            got = through_dicom_sr(event)
            assert got.event_id == native.sr_event_id(event.event_id, event.finding_code)
            expected = event.model_copy(update={"event_id": got.event_id})
        if got != expected:
            mismatches.append((type(event).__name__, differences(expected, got)))
    assert mismatches == []


def test_a_duplicated_delivery_is_the_same_message_again(small_run: SimulationRun) -> None:
    duplicates = [d.event for d in small_run.deliveries if d.duplicate]
    assert {type(e) for e in duplicates} == {ReportEvent, AlertEvent, InferenceEvent}
    for event in duplicates:
        if isinstance(event, ReportEvent):
            assert native.hl7_message(event) == native.hl7_message(event.model_copy())
        elif isinstance(event, AlertEvent):
            assert native.fhir_communication(event) == native.fhir_communication(event)
        else:
            assert isinstance(event, InferenceEvent)
            assert sr_bytes(event) == sr_bytes(event.model_copy())


REPORT = ReportEvent(
    event_id="3f0a4c1e-1111-4000-8000-000000000001",
    occurred_at_ms=1_767_614_340_123,
    site_id="site|01",
    study_uid="1.2.826.0.1.3680043.10.1.20260105.1",
    accession_number="A^1&2~3",
    patient_id="P\\1",
    modality="CT",
    body_part="HEAD",
    procedure_code="CTHEADWO",
    report_id="RPT-A|1",
    parent_report_id="RPT-A^0",
    status=ReportStatus.AMENDED,
    hl7_result_status="C",
    interpreter_id="site-01-rad-07",
    exam_completed_at_ms=1_767_611_700_000,
    findings=(
        Finding(finding_code="PE", label=Label.INDETERMINATE, label_method=LabelMethod.LLM),
        Finding(finding_code="ICH", label=Label.ABSENT, label_method=LabelMethod.NLP),
    ),
    critical_result_communicated_at_ms=1_767_613_000_007,
)


def test_hl7_delimiters_in_values_are_escaped_and_come_back() -> None:
    got = through_hl7(REPORT)
    assert (got.site_id, got.accession_number, got.patient_id) == ("site|01", "A^1&2~3", "P\\1")
    assert (got.report_id, got.parent_report_id) == ("RPT-A|1", "RPT-A^0")
    assert (got.status, got.hl7_result_status) == (ReportStatus.AMENDED, "M")
    assert got.critical_result_communicated_at_ms == 1_767_613_000_007
    assert got.findings == tuple(sorted(REPORT.findings, key=lambda f: f.finding_code))


@pytest.mark.parametrize(
    ("status", "given", "sent"),
    [
        (ReportStatus.PRELIMINARY, "R", "R"),  # a code the status table agrees with is kept
        (ReportStatus.PRELIMINARY, None, "P"),
        (ReportStatus.APPENDED, "C", "A"),  # C would say CORRECTED
        (ReportStatus.CORRECTED, "C", "C"),
        (ReportStatus.CANCELLED, None, "X"),
    ],
)
def test_obr_25_says_the_status(status: ReportStatus, given: str | None, sent: str) -> None:
    event = REPORT.model_copy(update={"status": status, "hl7_result_status": given})
    assert native.hl7_result_status(event) == sent
    assert (through_hl7(event).status, through_hl7(event).hl7_result_status) == (status, sent)


def test_an_alert_without_optional_fields_comes_back() -> None:
    from schemas.events import AlertChannel, AlertState

    alert = AlertEvent(
        event_id="e1",
        occurred_at_ms=1_767_614_340_000,
        site_id="site-01",
        study_uid="1.2.3",
        alert_id="alert-1",
        algorithm_name="pe-detect",
        algorithm_version="1.8.0",
        finding_code="PE",
        state=AlertState.EXPIRED,
        channel=AlertChannel.PAGE,
    )
    got = through_fhir(alert)
    assert got == alert.model_copy(update={"event_id": got.event_id})


def test_a_failed_inference_comes_back_with_its_status_and_reason() -> None:
    failed = InferenceEvent(
        event_id="0b9d8c7a-2222-4000-8000-000000000002",
        occurred_at_ms=1_767_614_340_000,
        site_id="site-03",
        study_uid="1.2.826.0.1.3680043.10.3.20260105.9",
        modality="CT",
        algorithm_name="pe-detect",
        algorithm_version="1.8.0",
        finding_code="PE",
        status=InferenceStatus.TIMED_OUT,
        failure_reason="TIMEOUT",
        threshold=0.5,
        result=InferenceResult.NOT_APPLICABLE,
        completed_at_ms=1_767_614_340_000,
    )
    got = through_dicom_sr(failed)
    assert got == failed.model_copy(update={"event_id": got.event_id})


def test_write_native_writes_every_event_in_delivery_order(
    small_run: SimulationRun, tmp_path: Path
) -> None:
    events = [d.event for d in small_run.deliveries][:150]
    written = native.write_native(tmp_path, events)
    reports = [e for e in events if isinstance(e, ReportEvent)]
    assert written.hl7 is not None
    frames = written.hl7.read_bytes().split(native.END_BLOCK)
    assert frames[-1] == b""
    assert [f.removeprefix(native.START_BLOCK).decode() for f in frames[:-1]] == [
        native.hl7_message(e) for e in reports
    ]
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    assert [json.loads(p.read_text()) for p in written.fhir] == [
        native.fhir_communication(e) for e in alerts
    ]
    inferences = [e for e in events if isinstance(e, InferenceEvent)]
    assert [p.read_bytes() for p in written.dicom_sr] == [sr_bytes(e) for e in inferences]
    assert sorted(written.dicom_sr) == list(written.dicom_sr)  # names sort in order

    only = native.write_native(tmp_path / "only", events, [NativeFormat.FHIR])
    assert (only.hl7, only.dicom_sr) == (None, ())
    assert len(only.fhir) == len(alerts)


def test_simulate_native_writes_the_chosen_formats(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["simulate", "--days", "1", "--sites", "1", "--studies-per-day", "8", "-q"]
    result = runner.invoke(app, [*base, "--native", str(tmp_path), "--emit", "hl7"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hl7"]
    assert (tmp_path / "hl7" / "reports.mllp").read_bytes().startswith(b"\x0bMSH|")
    refused = runner.invoke(app, [*base, "--emit", "fhir"])
    assert refused.exit_code != 0
    assert "--native" in refused.output
