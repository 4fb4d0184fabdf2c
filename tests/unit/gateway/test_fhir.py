"""FHIR R4 -> ReportEvent / AlertEvent, and the HTTP listener in front of it.

Hand-written resources that follow the standard (tests/data/fhir/good), the awkward
ones included (a transaction mixing resource types, subscription notifications of R4B
and of the R4 backport, a heartbeat, contained and logical references), and a corpus of
bad input (tests/data/fhir/bad) that must each be answered 4xx with an OperationOutcome
and dead-lettered with its bytes: nothing lost, no crash. The last test posts the files
with curl to the application served on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    Label,
    LabelMethod,
    Priority,
    ReportEvent,
    ReportStatus,
)
from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from streams.gateway import fhir as fhir_module
from streams.gateway import fhir_http
from streams.gateway.delivery import SOURCE_HEADER, DeliveryError, MemoryDelivery
from streams.gateway.fhir import (
    FhirIssue,
    FhirRefused,
    load_fhir_mapping,
    parse_events,
    parse_resource,
    resource_events,
)
from streams.gateway.fhir_http import FHIR_JSON, FhirListener, fhir_app
from tests.unit.gateway.test_hl7 import PE_PRESENT, ZDS, message, obr
from tests.unit.gateway.test_hl7 import events as hl7_events

DATA = Path(__file__).parents[2] / "data" / "fhir"
GOOD = DATA / "good"
BAD = DATA / "bad"
MAPPING = load_fhir_mapping().model_copy(update={"sites": {"ris.site-02": "SITE-02"}})
NOW_MS = 1_767_700_000_000


def good(name: str) -> bytes:
    return (GOOD / name).read_bytes()


def events_of(name: str) -> list[Any]:
    return parse_events(good(name), MAPPING)


def refusal(data: bytes | dict[str, Any]) -> FhirRefused:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    with pytest.raises(FhirRefused) as caught:
        parse_events(body, MAPPING)
    return caught.value


def edited(name: str, **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(good(name))
    document.update(changes)
    return document


# -- mapping --------------------------------------------------------------------------


def test_a_final_report_maps_as_the_same_report_sent_over_hl7_does() -> None:
    (event,) = events_of("diagnostic-report.json")

    assert isinstance(event, ReportEvent)
    assert event.event_id == "fhir:SITE-01:RPT-1:final:1767614340000"
    assert event.study_uid == "1.2.826.0.1.3680043.10.2.1"  # contained ImagingStudy
    assert (event.accession_number, event.patient_id) == ("ACC-1", "MRN123")
    assert (event.report_id, event.procedure_code, event.modality) == ("RPT-1", "71275", "CT")
    assert event.interpreter_id == "RAD42"
    assert [(f.finding_code, f.label, f.label_method) for f in event.findings] == [
        ("PE", Label.PRESENT, LabelMethod.STRUCTURED)
    ]
    # test_hl7's ORU^R01 carries the same facts: every field but the id and OBR-25 agrees.
    (hl7,) = hl7_events(message(obr(), PE_PRESENT, ZDS))
    differing = {"event_id", "hl7_result_status"}
    assert event.model_dump(exclude=differing) == hl7.model_dump(exclude=differing)
    assert EventValidator(lambda: event.occurred_at_ms).validate(event) == event


def test_a_transaction_mixing_resource_types_resolves_references_by_full_url() -> None:
    report, alert = events_of("transaction-bundle.json")

    assert isinstance(report, ReportEvent) and isinstance(alert, AlertEvent)
    assert report.site_id == alert.site_id == "SITE-02"  # meta.source, renamed by [sites]
    assert report.study_uid == alert.study_uid == "1.2.826.0.1.3680043.10.2.2"
    assert report.accession_number == "ACC-2"  # from the ImagingStudy
    assert report.patient_id == "MRN555"  # the Patient entry's MR identifier
    assert report.interpreter_id == "RAD7"  # the Practitioner entry
    assert report.modality == "CT"  # ImagingStudy.modality
    assert report.procedure_code == "RPID22"  # RadLex, a listed procedure system
    assert report.status == ReportStatus.PRELIMINARY
    # No issued, no meta.lastUpdated: the Bundle's timestamp, 08:30+01:00.
    assert report.occurred_at_ms == 1_767_684_600_000
    # The result Observation (SNOMED ICH, value absent) labels the report.
    assert [(f.finding_code, f.label) for f in report.findings] == [("ICH", Label.ABSENT)]
    assert (alert.alert_id, alert.finding_code, alert.state) == (
        "ALERT-9",
        "ICH",
        AlertState.RAISED,  # status in-progress, no state coding
    )
    assert (alert.algorithm_name, alert.algorithm_version) == ("ich-detect", "2.1.0")
    assert (alert.channel, alert.priority_after) == (AlertChannel.OTHER, Priority.URGENT)
    assert alert.occurred_at_ms == 1_767_682_320_000  # sent 07:52+01:00


def test_an_r4b_subscription_notification_resolves_relative_references() -> None:
    (event,) = events_of("subscription-notification.json")
    assert event.study_uid == "1.2.826.0.1.3680043.10.2.3"  # ImagingStudy/is-31 by fullUrl
    assert event.patient_id == "MRN777"  # Patient/p-12
    assert event.report_id == "dr-77"  # no identifier: the resource id
    assert event.occurred_at_ms == 1_767_780_299_000  # meta.lastUpdated
    assert [(f.finding_code, f.label) for f in event.findings] == [("ICH", Label.ABSENT)]


def test_a_relative_reference_resolves_against_a_restful_full_url_without_an_id() -> None:
    document = json.loads(good("subscription-notification.json"))
    del document["entry"][2]["resource"]["id"]  # the ImagingStudy: known by its fullUrl only
    (event,) = parse_events(orjson.dumps(document), MAPPING)
    assert event.study_uid == "1.2.826.0.1.3680043.10.2.3"


def test_an_r4_backport_notification_is_a_history_bundle_led_by_parameters() -> None:
    (event,) = events_of("backport-notification.json")
    assert (event.status, event.report_id) == (ReportStatus.CORRECTED, "dr-77")
    assert event.study_uid == "1.2.826.0.1.3680043.10.2.3"  # logical reference
    assert [(f.finding_code, f.label) for f in event.findings] == [("ICH", Label.PRESENT)]


def test_a_heartbeat_notification_gives_no_event_and_is_no_error() -> None:
    assert events_of("heartbeat-notification.json") == []


def test_a_communication_is_an_alert_state_change() -> None:
    (alert,) = events_of("communication-alert.json")

    assert isinstance(alert, AlertEvent)
    assert alert.event_id == "fhir-alert:SITE-01:ALERT-1:ACKNOWLEDGED:1767612000000"
    assert alert.state == AlertState.ACKNOWLEDGED  # the category coding wins over status
    assert alert.channel == AlertChannel.WORKLIST_REPRIORITISATION
    assert (alert.priority_before, alert.priority_after) == (Priority.ROUTINE, Priority.STAT)
    assert (alert.algorithm_name, alert.algorithm_version) == ("pe-detect", "1.4.2")
    assert (alert.recipient_role, alert.recipient_id) == ("radiologist", "RAD42")
    assert (alert.inference_event_id, alert.finding_code) == ("inf-0001", "PE")
    assert alert.study_uid == "1.2.826.0.1.3680043.10.2.1"
    assert EventValidator(lambda: alert.occurred_at_ms).validate(alert) == alert


def test_an_amended_report_relabels_and_keeps_the_report_id() -> None:
    (event,) = events_of("amended-report.json")
    assert (event.status, event.report_id, event.accession_number) == (
        ReportStatus.AMENDED,
        "RPT-1",
        "ACC-1",  # an ACSN identifier of the report itself
    )
    assert event.occurred_at_ms == 1_767_627_000_250  # 16:30:00.250+01:00
    assert event.exam_completed_at_ms == 1_767_571_200_000  # a date: its start, UTC
    assert [(f.finding_code, f.label) for f in event.findings] == [("PE", Label.ABSENT)]
    assert event.event_id != events_of("diagnostic-report.json")[0].event_id


def test_an_order_reference_gives_the_accession_number_only_when_typed_acsn() -> None:
    document = edited("diagnostic-report.json")
    study = document["contained"][0]
    study["identifier"] = [i for i in study["identifier"] if i.get("system") == "urn:dicom:uid"]
    acsn = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
    placer = {"identifier": {"value": "PLACER-ORDER-77"}}  # untyped: a placer order number
    document["basedOn"] = [placer]
    assert parse_events(orjson.dumps(document), MAPPING)[0].accession_number is None
    document["basedOn"] = [placer, {"identifier": {"type": acsn, "value": "ACC-7"}}]
    assert parse_events(orjson.dumps(document), MAPPING)[0].accession_number == "ACC-7"


def test_an_addendum_names_its_parent_report() -> None:
    (event,) = events_of("batch-addendum.json")
    assert (event.status, event.parent_report_id) == (ReportStatus.APPENDED, "RPT-1")
    assert event.site_id == "SITE-01"  # valueIdentifier of the site extension


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("partial", ReportStatus.PRELIMINARY),
        ("preliminary", ReportStatus.PRELIMINARY),
        ("final", ReportStatus.FINAL),
        ("amended", ReportStatus.AMENDED),
        ("corrected", ReportStatus.CORRECTED),
        ("appended", ReportStatus.APPENDED),
        ("cancelled", ReportStatus.CANCELLED),
        ("entered-in-error", ReportStatus.ENTERED_IN_ERROR),
    ],
)
def test_report_status_is_mapped(status: str, expected: ReportStatus) -> None:
    (event,) = parse_events(orjson.dumps(edited("diagnostic-report.json", status=status)), MAPPING)
    assert event.status == expected
    assert event.hl7_result_status is None  # FHIR carries no OBR-25
    assert f":{status}:" in event.event_id


def test_a_resource_sent_twice_gives_the_same_event_ids() -> None:
    assert events_of("transaction-bundle.json") == events_of("transaction-bundle.json")


def test_a_report_of_two_studies_gives_one_event_per_study() -> None:
    document = edited("diagnostic-report.json")
    document["imagingStudy"].append(
        {"identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.10.2.9"}}
    )
    first, second = parse_events(orjson.dumps(document), MAPPING)
    assert (first.study_uid, second.study_uid) == (
        "1.2.826.0.1.3680043.10.2.1",
        "1.2.826.0.1.3680043.10.2.9",
    )
    assert first.event_id.endswith(":1.2.826.0.1.3680043.10.2.1")
    assert second.event_id.endswith(":1.2.826.0.1.3680043.10.2.9")


def test_dates_without_time_are_in_the_mapping_zone(tmp_path: Path) -> None:
    path = tmp_path / "fhir.toml"
    shipped = Path(fhir_module.__file__).with_name("fhir.toml").read_text()
    path.write_text(shipped.replace('timezone = "UTC"', 'timezone = "Europe/Berlin"'))
    (event,) = parse_events(good("amended-report.json"), load_fhir_mapping(path))
    assert event.exam_completed_at_ms == 1_767_571_200_000 - 3_600_000  # CET midnight
    assert event.occurred_at_ms == 1_767_627_000_250  # an instant keeps its own offset


def test_a_default_site_serves_resources_that_name_none() -> None:
    body = (BAD / "report-no-site.json").read_bytes()
    assert refusal(body).code == FhirIssue.REQUIRED
    one_site = MAPPING.model_copy(
        update={"defaults": MAPPING.defaults.model_copy(update={"site_id": "SITE-09"})}
    )
    (event,) = parse_events(body, one_site)
    assert event.site_id == "SITE-09"


def test_the_diagnostics_never_carry_an_identifier() -> None:
    document = edited("diagnostic-report.json", status="registered")
    document["subject"]["identifier"]["value"] = "SECRET-MRN"
    error = refusal(document)
    assert "SECRET" not in str(error)
    assert (error.code, error.expression) == (FhirIssue.CODE_INVALID, "DiagnosticReport.status")


def test_a_mapping_with_a_bad_entry_names_it(tmp_path: Path) -> None:
    path = tmp_path / "fhir.toml"
    path.write_text('[report_status]\nfinal = "DONE"\n')
    with pytest.raises(ValueError, match="report_status"):
        load_fhir_mapping(path)
    path.write_text('[defaults]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ValueError, match="timezone"):
        load_fhir_mapping(path)


# The bad corpus: what each file is answered (status, issue type, dead-letter reason).
UNDECODABLE = DeadLetterReason.UNDECODABLE
INVALID = DeadLetterReason.VALIDATION_FAILED
BAD_CORPUS: dict[str, tuple[int, str, DeadLetterReason]] = {
    "alert-no-device.json": (422, "required", INVALID),
    "alert-no-study.json": (422, "required", INVALID),
    "alert-on-hold-status.json": (422, "code-invalid", INVALID),
    "alert-unknown-finding.json": (422, "required", INVALID),
    "alert-wrong-resource-type.json": (400, "not-supported", INVALID),
    "bundle-deeply-nested.json": (400, "structure", UNDECODABLE),
    "bundle-delete-report.json": (400, "not-supported", INVALID),
    "bundle-empty.json": (400, "structure", UNDECODABLE),
    "bundle-id-only-notification.json": (400, "not-supported", INVALID),
    "bundle-json-array.json": (400, "structure", UNDECODABLE),
    "bundle-latin1.json": (400, "structure", UNDECODABLE),
    "bundle-no-resource-type.json": (400, "structure", UNDECODABLE),
    "bundle-not-json.json": (400, "structure", UNDECODABLE),
    "bundle-only-patient.json": (422, "required", INVALID),
    "bundle-posted-diagnostic-report.json": (400, "not-supported", INVALID),
    "bundle-searchset.json": (400, "not-supported", INVALID),
    "bundle-transaction-one-bad-report.json": (422, "not-found", INVALID),
    "report-missing-code.json": (400, "invalid", INVALID),
    "report-missing-study-reference.json": (422, "required", INVALID),
    "report-no-report-id.json": (422, "required", INVALID),
    "report-no-site.json": (422, "required", INVALID),
    "report-no-time.json": (422, "required", INVALID),
    "report-registered-status.json": (422, "code-invalid", INVALID),
    "report-status-not-a-string.json": (400, "invalid", INVALID),
    "report-study-without-dicom-uid.json": (422, "not-found", INVALID),
    "report-time-without-offset.json": (400, "invalid", INVALID),
    "report-unknown-element.json": (400, "invalid", INVALID),
    "report-unknown-status.json": (422, "code-invalid", INVALID),
    "report-unresolvable-study.json": (422, "not-found", INVALID),
    "report-wrong-resource-type.json": (400, "not-supported", INVALID),
}
JSON_HEADERS = {"Content-Type": FHIR_JSON}
ENDPOINT = {"alert": "Communication", "bundle": "", "report": "DiagnosticReport"}
ACCEPT = {"alert": ("Communication",), "bundle": ("Bundle",), "report": ("DiagnosticReport",)}


def test_the_bad_corpus_table_lists_every_file() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BAD_CORPUS)


@pytest.mark.parametrize("name", sorted(BAD_CORPUS))
def test_each_bad_input_is_refused_with_its_issue(name: str) -> None:
    status, code, reason = BAD_CORPUS[name]
    with pytest.raises(FhirRefused) as caught:
        resource_events(
            parse_resource((BAD / name).read_bytes(), ACCEPT[name.split("-")[0]]), MAPPING
        )
    assert (caught.value.http_status, caught.value.code, caught.value.reason) == (
        status,
        code,
        reason,
    )


def _leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path]
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            paths.extend(_leaf_paths(child, (*path, key)))
    return paths


SAMPLES = {p.name: json.loads(p.read_bytes()) for p in sorted(GOOD.glob("*.json"))}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SAMPLES)), st.data())
def test_any_element_replaced_by_any_json_is_refused_or_mapped_never_a_crash(
    name: str, data: st.DataObject
) -> None:
    document = copy.deepcopy(SAMPLES[name])
    path = data.draw(st.sampled_from(_leaf_paths(document)))
    value = data.draw(JSON_VALUES)
    if not path:
        document = value
    else:
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
    with contextlib.suppress(FhirRefused):
        for event in parse_events(json.dumps(document).encode(), MAPPING):
            assert isinstance(event, ReportEvent | AlertEvent)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=20), st.integers(0, 4000))
def test_bytes_spliced_into_a_sample_are_refused_or_mapped_never_a_crash(
    name: str, noise: bytes, at: int
) -> None:
    body = good(name)
    with contextlib.suppress(FhirRefused):
        parse_events(body[:at] + noise + body[at:], MAPPING)


def test_the_modules_export_what_they_list() -> None:
    for module in (fhir_module, fhir_http):
        assert set(module.__all__) <= set(dir(module))


# -- the HTTP listener ----------------------------------------------------------------


@pytest.fixture
def delivery() -> MemoryDelivery:
    return MemoryDelivery()


@pytest.fixture
async def client(delivery: MemoryDelivery) -> AsyncIterator[TestClient[Any, Any]]:
    app = fhir_app(MAPPING, delivery, max_body_bytes=64 * 1024, clock=lambda: NOW_MS)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def post(
    client: TestClient[Any, Any],
    path: str,
    body: bytes,
    content_type: str = FHIR_JSON,
    **headers: str,
) -> tuple[int, dict[str, Any] | None, Any]:
    response = await client.post(path, data=body, headers={"Content-Type": content_type, **headers})
    text = await response.read()
    return response.status, (orjson.loads(text) if text else None), response.headers


def assert_outcome(document: dict[str, Any] | None, code: str) -> None:
    assert document is not None
    outcome = OperationOutcome.model_validate(document)  # a valid FHIR OperationOutcome
    (issue,) = outcome.issue
    assert (issue.severity, issue.code) == ("error", code)
    assert issue.diagnostics


async def test_a_posted_report_is_created_once_it_is_delivered(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    status, body, headers = await post(
        client, "/fhir/DiagnosticReport", good("diagnostic-report.json"), **{"X-Request-Id": "r-1"}
    )
    assert status == 201
    assert headers["Location"].startswith("/fhir/DiagnosticReport/")
    assert headers["X-Request-Id"] == "r-1"
    assert body is not None and body["issue"][0]["severity"] == "information"
    (delivered,) = delivery.delivered
    assert delivered.event == events_of("diagnostic-report.json")[0]
    assert delivered.source.startswith("fhir://127.0.0.1:")
    assert delivered.control_id == "r-1"
    assert delivery.dead_letters == []


async def test_prefer_return_minimal_and_representation(client: TestClient[Any, Any]) -> None:
    body = good("communication-alert.json")
    response = await client.post(
        "/fhir/Communication",
        data=body,
        headers={"Content-Type": "application/json", "Prefer": "return=minimal"},
    )
    assert (response.status, await response.read()) == (201, b"")
    response = await client.post(
        "/fhir/Communication",
        data=body,
        headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
    )
    assert (response.status, await response.read()) == (201, body)


async def test_a_transaction_is_answered_with_a_transaction_response(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    status, body, _ = await post(client, "/fhir", good("transaction-bundle.json"))
    assert status == 200
    response = Bundle.model_validate(body)
    assert response.type == "transaction-response"
    statuses = [entry.response.status for entry in response.entry or []]
    assert statuses == ["200 OK"] + ["201 Created"] * 6  # the Patient was a PUT
    assert [type(e) for e in delivery.events()] == [ReportEvent, AlertEvent]


async def test_a_batch_is_answered_with_a_batch_response(client: TestClient[Any, Any]) -> None:
    status, body, _ = await post(client, "/fhir/", good("batch-addendum.json"))
    assert status == 200
    assert Bundle.model_validate(body).type == "batch-response"


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("subscription-notification.json", 1),
        ("backport-notification.json", 1),
        ("heartbeat-notification.json", 0),
    ],
)
async def test_notifications_are_acknowledged_with_200(
    client: TestClient[Any, Any], delivery: MemoryDelivery, name: str, count: int
) -> None:
    status, body, _ = await post(client, "/fhir", good(name))
    assert status == 200
    assert OperationOutcome.model_validate(body).issue[0].severity == "information"
    assert len(delivery.delivered) == count


async def test_metadata_is_a_valid_capability_statement(client: TestClient[Any, Any]) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status == 200
    assert response.content_type == FHIR_JSON
    statement = CapabilityStatement.model_validate(await response.json(content_type=None))
    (rest,) = statement.rest or []
    assert {r.type for r in rest.resource or []} == {"DiagnosticReport", "Communication"}


@pytest.mark.parametrize("name", sorted(BAD_CORPUS))
async def test_each_bad_input_is_answered_4xx_and_dead_lettered_with_its_bytes(
    client: TestClient[Any, Any], delivery: MemoryDelivery, name: str
) -> None:
    expected_status, code, reason = BAD_CORPUS[name]
    data = (BAD / name).read_bytes()
    status, body, _ = await post(client, f"/fhir/{ENDPOINT[name.split('-')[0]]}", data)
    assert status == expected_status
    assert_outcome(body, code)
    (letter,) = delivery.dead_letters
    assert (letter.reason, letter.value, letter.received_at_ms) == (reason, data, NOW_MS)
    assert f"HTTP {expected_status}" in letter.message
    assert any(h.key == SOURCE_HEADER for h in letter.headers)
    assert delivery.delivered == []  # a refused transaction delivers none of its reports


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/fhir+xml", "application/x-www-form-urlencoded"]
)
async def test_other_content_types_are_refused_415(
    client: TestClient[Any, Any], delivery: MemoryDelivery, content_type: str
) -> None:
    data = good("diagnostic-report.json")
    status, body, _ = await post(client, "/fhir/DiagnosticReport", data, content_type)
    assert status == 415
    assert_outcome(body, "not-supported")
    (letter,) = delivery.dead_letters
    assert (letter.reason, letter.value) == (DeadLetterReason.UNDECODABLE, data)
    assert delivery.delivered == []


async def test_a_charset_other_than_utf8_is_refused_415(client: TestClient[Any, Any]) -> None:
    status, _, _ = await post(
        client, "/fhir", good("transaction-bundle.json"), "application/fhir+json; charset=latin-1"
    )
    assert status == 415


async def test_an_oversized_body_is_refused_413_and_its_start_dead_lettered(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    data = b'{"resourceType": "Bundle", "type": "collection", "pad": "' + b"x" * 200_000 + b'"}'
    status, body, _ = await post(client, "/fhir", data)
    assert status == 413
    assert_outcome(body, "too-long")
    (letter,) = delivery.dead_letters
    assert letter.reason == DeadLetterReason.OVERSIZED
    assert 0 < len(letter.value) <= 65_536 and data.startswith(letter.value)


async def test_a_chunked_oversized_body_is_refused_413(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 10_000

    response = await client.post("/fhir", data=chunks(), headers={"Content-Type": FHIR_JSON})
    assert response.status == 413
    assert delivery.dead_letters[0].reason == DeadLetterReason.OVERSIZED


async def test_kafka_unavailable_is_503_transient_and_nothing_is_dead_lettered(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    delivery.failure = DeliveryError("broker down")
    status, body, headers = await post(client, "/fhir", good("transaction-bundle.json"))
    assert status == 503
    assert_outcome(body, "transient")
    assert headers["Retry-After"]
    assert delivery.delivered == [] and delivery.dead_letters == []
    # The client sends it again once Kafka is back: the same events, once.
    delivery.failure = None
    status, _, _ = await post(client, "/fhir", good("transaction-bundle.json"))
    assert status == 200
    assert delivery.events() == events_of("transaction-bundle.json")


async def test_bad_input_while_kafka_is_down_is_503_not_a_silent_refusal(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    delivery.failure = DeliveryError("broker down")
    status, body, _ = await post(client, "/fhir", (BAD / "bundle-not-json.json").read_bytes())
    assert status == 503  # the refusal could not be recorded: the client must send again
    assert_outcome(body, "transient")


async def test_a_post_of_another_resource_type_is_404_and_dead_lettered(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    data = b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}'
    status, body, _ = await post(client, "/fhir/Observation", data)
    assert status == 404
    assert_outcome(body, "not-supported")
    assert delivery.dead_letters[0].value == data


async def test_other_methods_and_paths_are_answered_with_an_operation_outcome(
    client: TestClient[Any, Any], delivery: MemoryDelivery
) -> None:
    response = await client.get("/fhir/DiagnosticReport")
    assert response.status == 405
    assert_outcome(await response.json(content_type=None), "not-supported")
    response = await client.get("/elsewhere")
    assert response.status == 404
    assert_outcome(await response.json(content_type=None), "not-found")
    assert delivery.dead_letters == []  # nothing was sent to be kept


async def test_a_mapping_bug_is_500_but_the_input_is_kept(
    client: TestClient[Any, Any], delivery: MemoryDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> list[Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fhir_http, "resource_events", broken)
    data = good("diagnostic-report.json")
    status, body, _ = await post(client, "/fhir/DiagnosticReport", data)
    assert status == 500
    assert_outcome(body, "exception")
    assert delivery.dead_letters[0].value == data


async def test_events_breaking_the_contract_rules_are_refused_422(
    delivery: MemoryDelivery,
) -> None:
    # The clock says it is a day before the report was issued: too far in the future.
    validator = EventValidator(lambda: 1_767_614_340_000 - 86_400_000)
    app = fhir_app(MAPPING, delivery, validator=validator)
    async with TestClient(TestServer(app)) as client:
        status, body, _ = await post(
            client, "/fhir/DiagnosticReport", good("diagnostic-report.json")
        )
    assert status == 422
    assert_outcome(body, "value")
    assert delivery.delivered == []
    assert delivery.dead_letters[0].reason == DeadLetterReason.VALIDATION_FAILED


async def test_the_listener_stops_only_after_answering_what_is_in_flight(
    delivery: MemoryDelivery,
) -> None:
    listener = FhirListener(delivery, MAPPING)
    await listener.start("127.0.0.1", 0)
    delivery.gate = asyncio.Event()  # Kafka holds the events: the request stays in flight
    url = f"http://127.0.0.1:{listener.port}/fhir/DiagnosticReport"
    async with aiohttp.ClientSession() as session:
        posting = asyncio.ensure_future(
            session.post(url, data=good("diagnostic-report.json"), headers=JSON_HEADERS)
        )
        await delivery.entered.wait()
        stopping = asyncio.ensure_future(listener.stop(timeout_s=10))
        await asyncio.sleep(0.05)
        assert not stopping.done()  # waiting for the request in flight
        delivery.gate.set()
        response = await posting
        assert response.status == 201
        assert await stopping is True
    assert len(delivery.delivered) == 1


async def test_a_stop_that_times_out_says_so(delivery: MemoryDelivery) -> None:
    listener = FhirListener(delivery, MAPPING)
    await listener.start("127.0.0.1", 0)
    delivery.gate = asyncio.Event()  # never opened
    url = f"http://127.0.0.1:{listener.port}/fhir/DiagnosticReport"
    async with aiohttp.ClientSession() as session:
        posting = asyncio.ensure_future(
            session.post(url, data=good("diagnostic-report.json"), headers=JSON_HEADERS)
        )
        await delivery.entered.wait()
        assert await listener.stop(timeout_s=0.1) is False
        with contextlib.suppress(aiohttp.ClientError):
            response = await posting
            assert response.status != 201  # never acknowledged
    assert delivery.delivered == []


# -- a real third-party client --------------------------------------------------------

CURL = shutil.which("curl") or "/usr/bin/curl"


async def curl_post(url: str, path: Path, content_type: str = FHIR_JSON) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        CURL,
        "--silent",
        "--show-error",
        "--noproxy",
        "*",
        "--max-time",
        "20",
        "--header",
        f"Content-Type: {content_type}",
        "--header",
        "Expect:",
        "--data-binary",
        f"@{path}",
        "--write-out",
        "\n%{http_code}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err
    body, _, code = out.rpartition(b"\n")
    return int(code), body


@pytest.mark.skipif(not Path(CURL).exists(), reason="curl is not installed")
async def test_curl_posts_every_sample_to_the_served_application(
    delivery: MemoryDelivery,
) -> None:
    runner = web.AppRunner(fhir_app(MAPPING, delivery))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}/fhir"
        endpoint = {"diagnostic-report": "/DiagnosticReport", "amended-report": "/DiagnosticReport"}
        expected_events = 0
        for path in sorted(GOOD.glob("*.json")):
            stem = path.stem
            url = base + endpoint.get(stem, "/Communication" if "communication" in stem else "")
            code, body = await curl_post(url, path)
            assert code == (201 if url != base else 200), (path.name, body)
            expected_events += len(events_of(path.name))
        assert len(delivery.delivered) == expected_events

        for path in sorted(BAD.iterdir()):
            code, body = await curl_post(f"{base}/{ENDPOINT[path.name.split('-')[0]]}", path)
            assert code == BAD_CORPUS[path.name][0], path.name
            assert (
                OperationOutcome.model_validate(orjson.loads(body)).issue[0].code
                == (BAD_CORPUS[path.name][1])
            )
        assert [letter.value for letter in delivery.dead_letters] == [
            p.read_bytes() for p in sorted(BAD.iterdir())
        ]
        assert len(delivery.delivered) == expected_events  # no bad input delivered anything

        # curl's default form content type is refused, and kept.
        code, _ = await curl_post(
            f"{base}/DiagnosticReport",
            GOOD / "diagnostic-report.json",
            "application/x-www-form-urlencoded",
        )
        assert code == 415
        assert delivery.dead_letters[-1].reason == DeadLetterReason.UNDECODABLE
    finally:
        await runner.cleanup()
