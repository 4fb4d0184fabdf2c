"""HL7 v2 ORU^R01 -> ReportEvent: hand-written messages that follow the standard,
the awkward ones included, and a corpus of bad ones that must be refused, never crash."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Label, LabelMethod, ReportStatus
from schemas.validation import EventValidator
from streams.gateway.hl7 import (
    Hl7Error,
    Hl7Refused,
    acknowledgement,
    load_hl7_mapping,
    parse_message,
    report_events,
)

MAPPING = load_hl7_mapping()
MSH = "MSH|^~\\&|RIS|SITE-01|IMGOV|IMGOV|20260105120000||ORU^R01^ORU_R01|{control}|P|{version}"
PID = "PID|||MRN123^^^SITE-01^MR~NHS9^^^NHS^NH||Doe^Jane"
ZDS = "ZDS|1.2.826.0.1.3680043.10.2.1^RIS^Application^DICOM"


def obr(set_id: int = 1, status: str = "F", report: str = "RPT-1", *, parent: str = "") -> str:
    fields = [""] * 33
    fields[1] = str(set_id)
    fields[2] = "ORD-1"
    fields[3] = f"{report}^RIS"
    fields[4] = "71275^CT angiography chest^CPT"
    fields[7] = "20260105110000"
    fields[8] = "20260105111500"
    fields[18] = "ACC-1"
    fields[22] = "20260105115900"
    fields[24] = "CT"
    fields[25] = status
    fields[29] = f"^{parent}" if parent else ""
    fields[32] = "RAD42&Smith&John"
    return "OBR" + "|".join(fields)


def coded(set_id: int, observation: str, value: str, status: str = "F") -> str:
    return f"OBX|{set_id}|CWE|{observation}||{value}||||||{status}"


PE_PRESENT = coded(1, "59282003^Pulmonary embolism^SCT", "52101004^Present^SCT")


def message(*segments: str, control: str = "MSG-1", version: str = "2.5.1") -> str:
    return "\r".join([MSH.format(control=control, version=version), PID, *segments]) + "\r"


def events(text: str) -> list:
    return report_events(parse_message(text), MAPPING)


def refusal(text: str) -> Hl7Refused:
    with pytest.raises(Hl7Refused) as caught:
        events(text)
    return caught.value


def test_a_final_report_becomes_one_report_event_with_its_coded_finding() -> None:
    (event,) = events(message(obr(), PE_PRESENT, ZDS))

    assert event.event_id == "hl7:RIS:MSG-1:1"
    assert event.site_id == "SITE-01"
    assert event.study_uid == "1.2.826.0.1.3680043.10.2.1"
    assert (event.accession_number, event.patient_id) == ("ACC-1", "MRN123")
    assert (event.report_id, event.procedure_code, event.modality) == ("RPT-1", "71275", "CT")
    assert (event.status, event.hl7_result_status) == (ReportStatus.FINAL, "F")
    assert event.interpreter_id == "RAD42"
    assert event.occurred_at_ms == 1_767_614_340_000  # 2026-01-05T11:59:00Z (OBR-22)
    assert event.exam_completed_at_ms == 1_767_611_700_000  # 11:15:00Z (OBR-8)
    assert [(f.finding_code, f.label, f.label_method) for f in event.findings] == [
        ("PE", Label.PRESENT, LabelMethod.STRUCTURED)
    ]
    # What the gateway produces passes the contract checks the worker applies.
    assert EventValidator(lambda: event.occurred_at_ms).validate(event) == event


def test_repeating_obx_text_is_ignored_and_a_later_observation_of_a_finding_wins() -> None:
    (event,) = events(
        message(
            obr(),
            "OBX|1|TX|IMP^Impression^L||Filling defect, right lower lobe.||||||F",
            PE_PRESENT,
            "OBX|3|NM|DIAM^Diameter^L||12|mm|||||F",
            coded(4, "1386000^Intracranial haemorrhage^SCT", "2667000^Absent^SCT"),
            coded(5, "59282003^Pulmonary embolism^SCT", "82334004^Indeterminate^SCT", "C"),
            coded(6, "999^Unmapped^L", "52101004^Present^SCT"),
            ZDS,
        )
    )
    assert [(f.finding_code, f.label) for f in event.findings] == [
        ("ICH", Label.ABSENT),
        ("PE", Label.INDETERMINATE),
    ]


def test_escaped_delimiters_are_resolved() -> None:
    (event,) = events(message(obr(report="RPT\\F\\7\\S\\A\\T\\B"), ZDS))
    assert event.report_id == "RPT|7^A&B"


def test_each_obr_group_is_one_event_with_its_own_observations() -> None:
    first, second = events(message(obr(1, "F", "RPT-1"), PE_PRESENT, obr(2, "P", "RPT-2"), ZDS))
    assert (first.event_id, second.event_id) == ("hl7:RIS:MSG-1:1", "hl7:RIS:MSG-1:2")
    assert (first.status, second.status) == (ReportStatus.FINAL, ReportStatus.PRELIMINARY)
    assert [f.finding_code for f in first.findings] == ["PE"]
    assert second.findings == ()


def test_a_report_takes_its_own_zds_and_patient_else_the_messages() -> None:
    zds2 = ZDS.replace("10.2.1^", "10.2.2^")
    first, second = events(message(obr(1, "F", "RPT-1"), ZDS, obr(2, "F", "RPT-2"), zds2))
    assert (first.study_uid, second.study_uid) == (
        "1.2.826.0.1.3680043.10.2.1",
        "1.2.826.0.1.3680043.10.2.2",
    )
    # A group without a ZDS of its own takes the message's first (one study, two reports).
    first, second = events(message(obr(1, "F", "RPT-1"), obr(2, "F", "RPT-2"), zds2))
    assert first.study_uid == second.study_uid == "1.2.826.0.1.3680043.10.2.2"
    # Two patients in one ORU^R01: each report is its own patient's.
    second_patient = PID.replace("MRN123", "MRN999")
    first, second = events(message(obr(1), ZDS, second_patient, obr(2, report="RPT-2"), zds2))
    assert (first.patient_id, second.patient_id) == ("MRN123", "MRN999")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("P", ReportStatus.PRELIMINARY),
        ("R", ReportStatus.PRELIMINARY),
        ("C", ReportStatus.CORRECTED),
        ("A", ReportStatus.APPENDED),
        ("X", ReportStatus.CANCELLED),
        ("W", ReportStatus.ENTERED_IN_ERROR),
    ],
)
def test_result_status_is_mapped(code: str, status: ReportStatus) -> None:
    (event,) = events(message(obr(status=code, parent="RPT-0"), ZDS))
    assert (event.status, event.hl7_result_status) == (status, code)
    assert event.parent_report_id == "RPT-0"


def test_a_retransmitted_message_gives_the_same_event_ids() -> None:
    text = message(obr(), PE_PRESENT, ZDS)
    assert events(text) == events(text)


def test_line_feeds_instead_of_carriage_returns_are_accepted() -> None:
    assert events(message(obr(), ZDS).replace("\r", "\n")) == events(message(obr(), ZDS))


def test_times_without_an_offset_are_in_the_mapping_zone(tmp_path: Path) -> None:
    path = tmp_path / "hl7.toml"
    shipped = Path(__file__).parents[3] / "streams" / "gateway" / "hl7.toml"
    path.write_text(shipped.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berlin"'))
    berlin = load_hl7_mapping(path)
    (event,) = report_events(parse_message(message(obr(), ZDS)), berlin)
    assert event.occurred_at_ms == 1_767_614_340_000 - 3_600_000  # CET is UTC+1 in January
    with_offset = message(obr(), ZDS).replace("20260105115900", "20260105115900-0500")
    (event,) = report_events(parse_message(with_offset), berlin)
    assert event.occurred_at_ms == 1_767_614_340_000 + 5 * 3_600_000


def test_version_2_3_is_accepted() -> None:
    (event,) = events(message(obr(), ZDS, version="2.3"))
    assert event.status == ReportStatus.FINAL


@pytest.mark.parametrize(
    ("text", "code", "location", "reject"),
    [
        (message(obr(), ZDS).replace("ORU^R01^ORU_R01", "ADT^A01"), "200", "MSH-9", True),
        (message(obr(), ZDS, version="2.6"), "203", "MSH-12", True),
        (message(obr(status="I"), ZDS), "103", "OBR-25", False),
        (message(obr(status=""), ZDS), "101", "OBR-25", False),
        (message(obr()), "101", "ZDS-1.1", False),
        (message(obr(report=""), ZDS), "101", "OBR-3.1", False),
        (message(obr(), ZDS).replace("20260105115900", "2026-01-05"), "102", "OBR-22", False),
        (message(obr(), ZDS).replace("20260105115900", "20261305115900"), "102", "OBR-22", False),
        (message(ZDS), "100", "OBR", False),
        (message(obr(), ZDS, control=""), "101", "MSH-10", False),
    ],
)
def test_bad_messages_are_refused_with_the_hl7_error(
    text: str, code: str, location: str, reject: bool
) -> None:
    error = refusal(text)
    assert (error.code, error.location, error.reject) == (code, location, reject)
    ack = acknowledgement(parse_message(text), error).split("\r")
    assert ack[1].startswith("MSA|AR|" if reject else "MSA|AE|")
    segment, _, field = location.partition("-")
    assert ack[2].split("|")[2] == (f"{segment}^1^{field}" if field else segment)
    assert ack[2].split("|")[3].startswith(f"{code}^")


def test_the_reason_never_carries_an_identifier() -> None:
    error = refusal(message(obr(status="Q"), ZDS).replace("MRN123", "SECRET-MRN"))
    assert "SECRET" not in str(error)
    assert "'Q'" in error.reason  # a status code is no identifier: shown


def test_acknowledgement_accepts_with_the_control_id() -> None:
    ack = acknowledgement(parse_message(message(obr(), ZDS, control="CTRL-9")))
    msh, msa = ack.split("\r")
    assert msh.split("|")[8] == "ACK^R01^ACK"
    assert msa == "MSA|AA|CTRL-9"


@pytest.mark.parametrize("text", ["", "hello", "PID|||x", "MSH", "MSH|^~\\&|\rOBR|1"])
def test_text_that_is_not_hl7_is_rejected(text: str) -> None:
    with pytest.raises(Hl7Refused) as caught:
        report_events(parse_message(text), MAPPING)
    assert caught.value.reject or caught.value.code in {
        Hl7Error.REQUIRED_FIELD_MISSING,
        Hl7Error.SEGMENT_SEQUENCE,
    }


VALID = message(obr(), PE_PRESENT, ZDS)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200), st.integers(0, len(VALID)))
def test_arbitrary_input_is_refused_or_mapped_never_a_crash(noise: str, at: int) -> None:
    for text in (noise, VALID[:at] + noise + VALID[at:], "MSH" + noise):
        with contextlib.suppress(Hl7Refused):
            report_events(parse_message(text), MAPPING)


def test_a_mapping_with_a_bad_entry_names_it(tmp_path: Path) -> None:
    path = tmp_path / "hl7.toml"
    path.write_text('[fields]\nstudy_uid = "ZDS1"\n')
    with pytest.raises(ValueError, match="study_uid"):
        load_hl7_mapping(path)
    path.write_text('[result_status]\nF = "DONE"\n')
    with pytest.raises(ValueError, match="result_status"):
        load_hl7_mapping(path)


# -- body part, label method, critical result call, amended (issue 14: what the clinic
# simulator's HL7 emitter sends) ------------------------------------------------------


def with_field(segment: str, number: int, value: str) -> str:
    fields = segment.split("|")
    fields += [""] * (number + 1 - len(fields))
    fields[number] = value
    return "|".join(fields)


def test_body_part_is_read_from_the_body_site_of_obr_15() -> None:
    (event,) = events(message(with_field(obr(), 15, "^^^CHEST&Chest&L"), PE_PRESENT, ZDS))
    assert event.body_part == "CHEST"
    (bare,) = events(message(obr(), PE_PRESENT, ZDS))
    assert bare.body_part is None


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("NLP^Natural language processing^99IMGOV", LabelMethod.NLP),
        ("LLM^Large language model^99IMGOV", LabelMethod.LLM),
        ("MANUAL^Manual^99IMGOV", LabelMethod.MANUAL),
        ("", LabelMethod.STRUCTURED),  # no observation method: the coded value itself
        ("OTHER^Something else^L", LabelMethod.STRUCTURED),  # not listed
    ],
)
def test_the_label_method_is_the_observation_method_of_obx_17(
    method: str, expected: LabelMethod
) -> None:
    (event,) = events(message(obr(), with_field(PE_PRESENT, 17, method), ZDS))
    assert [(f.finding_code, f.label_method) for f in event.findings] == [("PE", expected)]


def test_the_critical_result_call_is_the_time_of_a_listed_dtm_observation() -> None:
    call = "OBX|2|DTM|CRITCOMM^Critical result communicated^99IMGOV||20260105114500.250+0100"
    (event,) = events(message(obr(), PE_PRESENT, call, ZDS))
    assert event.critical_result_communicated_at_ms == 1_767_609_900_250  # 10:45:00.250Z
    # The same code as text, or another code as a time, is not the call.
    as_text = "OBX|2|ST|CRITCOMM^Critical result communicated^99IMGOV||20260105114500"
    other = "OBX|2|DTM|OTHER^Another time^99IMGOV||20260105114500"
    for segment in (as_text, other):
        (event,) = events(message(obr(), PE_PRESENT, segment, ZDS))
        assert event.critical_result_communicated_at_ms is None


def test_a_critical_result_call_that_is_not_a_time_is_refused() -> None:
    call = "OBX|2|DTM|CRITCOMM^Critical result communicated^99IMGOV||yesterday"
    error = refusal(message(obr(), PE_PRESENT, call, ZDS))
    assert (error.code, error.location) == (Hl7Error.DATA_TYPE, "OBX(2)-5")


def test_the_local_code_m_is_an_amended_report() -> None:
    (event,) = events(message(obr(status="M"), PE_PRESENT, ZDS))
    assert (event.status, event.hl7_result_status) == (ReportStatus.AMENDED, "M")


def test_an_offset_of_a_day_or_more_is_a_data_type_error_not_a_crash() -> None:
    # Found by the property test above: "-5900" made datetime.timezone raise ValueError.
    error = refusal(message(with_field(obr(), 22, "2026010511-5900"), PE_PRESENT, ZDS))
    assert (error.code, error.location) == (Hl7Error.DATA_TYPE, "OBR-22")
