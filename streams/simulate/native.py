"""The simulated clinic in the formats hospital systems send (DESIGN §11): ``imgov
simulate --native DIR``.

Each contract event becomes the message its real source would send, with every field
the lineage join and the KPIs use where the gateway's shipped mappings
(``streams/gateway/*.toml``) read it:

* a :class:`~schemas.events.ReportEvent` -> an HL7 v2.5.1 ORU^R01 from the RIS
  (:func:`hl7_message`), one message per report status change;
* an :class:`~schemas.events.AlertEvent` -> a FHIR R4 Communication from the AI
  platform (:func:`fhir_communication`), the algorithm a contained Device, the recipient
  a contained PractitionerRole;
* an :class:`~schemas.events.InferenceEvent` -> a DICOM Comprehensive 3D SR, TID 1500
  (:func:`dicom_sr`), built with highdicom: one measurement group with the finding, the
  algorithm identification (TID 4019), the qualitative evaluation, the probability and
  the threshold, or the run status and failure reason of a failed run.

The gateway names its events after the messages (``hl7:<MSH-3>:<MSH-10>:<OBR-1>``,
``dicom-sr:<SOP instance UID>:<finding>``, ...), not after the contract event ids. Every
message identifier here is derived from the event id alone, so a duplicated delivery is
the same message again (which the gateway turns into the same event, de-duplicated
downstream), and an alert can name its inference by the id the gateway gives that
inference's SR (:func:`sr_event_id`).

Pure apart from :func:`write_native`, which writes the files. This package may not
import ``streams.gateway`` (layers), so the code tables below repeat the shipped
mappings' entries; ``tests/unit/simulate/test_native.py`` sends every message through
the gateway's mapping functions and checks both stay in step.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage

from schemas.events import (
    AlertEvent,
    Event,
    InferenceEvent,
    InferenceResult,
    InferenceStatus,
    Label,
    Priority,
    ReportEvent,
    ReportStatus,
)
from streams.simulate.output import NativeFormat

__all__ = [
    "END_BLOCK",
    "START_BLOCK",
    "NativeFormat",
    "NativeOutput",
    "dicom_sr",
    "fhir_communication",
    "hl7_control_id",
    "hl7_message",
    "hl7_result_status",
    "mllp_frame",
    "sr_event_id",
    "sr_sop_instance_uid",
    "write_native",
]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
"""MLLP frame delimiters (HL7 v2 Transport Specification: MLLP release 2)."""


# -- codes shared with the gateway's shipped mappings ----------------------------------

_SNOMED_FINDINGS = {
    "PE": ("59282003", "Pulmonary embolism"),
    "ICH": ("1386000", "Intracranial haemorrhage"),
}
"""Finding code -> SNOMED CT concept (hl7.toml [findings], fhir.toml, dicom_sr.toml)."""
_LOCAL = "99IMGOV"
"""Local coding scheme (HL7 table 0396 ``99zzz``; PS3.16 private ``99`` designators)."""
_SNOMED_LABELS = {
    Label.PRESENT: ("52101004", "Present"),
    Label.ABSENT: ("2667000", "Absent"),
    Label.INDETERMINATE: ("82334004", "Indeterminate"),
}
_HL7_STATUS = {
    ReportStatus.PRELIMINARY: "P",
    ReportStatus.FINAL: "F",
    ReportStatus.CORRECTED: "C",
    ReportStatus.APPENDED: "A",
    ReportStatus.AMENDED: "M",  # a local code: HL7 table 0123 has none (hl7.toml)
    ReportStatus.CANCELLED: "X",
    ReportStatus.ENTERED_IN_ERROR: "W",
}
_HL7_STATUS_OF = {"R": ReportStatus.PRELIMINARY, **{v: k for k, v in _HL7_STATUS.items()}}


def _finding_code(finding_code: str) -> tuple[str, str, str]:
    """(code, meaning, scheme) of a finding: SNOMED CT when known, else a local code."""
    known = _SNOMED_FINDINGS.get(finding_code)
    return (*known, "SCT") if known else (finding_code, finding_code, _LOCAL)


# -- HL7 v2 ---------------------------------------------------------------------------

_HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def _esc(value: str | None) -> str:
    """``value`` with HL7's delimiters escaped (``\\F\\``, ``\\S\\``, ...); '' for None."""
    if value is None:
        return ""
    for raw, escaped in _HL7_ESCAPES:
        value = value.replace(raw, escaped)
    return value.replace("\r", "\\X0D\\").replace("\n", "\\X0A\\")


def _dtm(ms: int | None) -> str:
    """An HL7 DTM with milliseconds and the UTC offset; '' for None."""
    if ms is None:
        return ""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y%m%d%H%M%S") + f".{ms % 1000:03d}+0000"


def hl7_result_status(event: ReportEvent) -> str:
    """OBR-25 of an event's message: its ``hl7_result_status`` when HL7 table 0123 gives
    that code its status, else the code of its status (APPENDED A; AMENDED M, a local
    code that ``hl7.toml`` lists, as the table has none)."""
    code = event.hl7_result_status
    if code is None or _HL7_STATUS_OF.get(code) is not event.status:
        return _HL7_STATUS[event.status]
    return code


def hl7_control_id(event: ReportEvent) -> str:
    """MSH-10 of an event's message: 20 characters (the v2.5 length) of its id."""
    return event.event_id.replace("-", "")[:20]


def hl7_message(event: ReportEvent) -> str:
    """The ORU^R01 (v2.5.1) a RIS sends for one report status change; segments ended by
    CR, the last one too. Where ``hl7.toml`` reads each field: MSH-4 site, ZDS-1 study,
    PID-3 patient, OBR-3 report, OBR-4 procedure, OBR-8 exam completed, OBR-15.4 body
    part, OBR-18 accession, OBR-22 status change, OBR-24 modality, OBR-25 status,
    OBR-29.2 parent report, OBR-32 interpreter; one coded OBX per finding (OBX-17 the
    label method), one DTM OBX for the critical result call."""
    status = hl7_result_status(event)
    occurred = _dtm(event.occurred_at_ms)
    obr = [""] * 33
    obr[0] = "OBR"
    obr[1] = "1"
    obr[2] = _esc(event.accession_number)
    obr[3] = f"{_esc(event.report_id)}^RIS"
    obr[4] = f"{_esc(event.procedure_code)}^^L" if event.procedure_code else ""
    obr[7] = obr[8] = _dtm(event.exam_completed_at_ms)
    obr[15] = f"^^^{_esc(event.body_part)}" if event.body_part else ""
    obr[18] = _esc(event.accession_number)
    obr[22] = occurred
    obr[24] = _esc(event.modality)
    obr[25] = status
    obr[29] = f"^{_esc(event.parent_report_id)}" if event.parent_report_id else ""
    obr[32] = _esc(event.interpreter_id)
    segments = [
        f"MSH|^~\\&|RIS|{_esc(event.site_id)}|IMGOV|IMGOV|{occurred}||ORU^R01^ORU_R01|"
        f"{hl7_control_id(event)}|P|2.5.1",
        f"PID|1||{_esc(event.patient_id)}^^^{_esc(event.site_id)}^MR"
        if event.patient_id
        else "PID|1",
        "|".join(obr).rstrip("|"),
    ]
    for n, finding in enumerate(event.findings, 1):
        code, meaning, scheme = _finding_code(finding.finding_code)
        value, value_meaning = _SNOMED_LABELS[finding.label]
        method = finding.label_method.value
        segments.append(
            f"OBX|{n}|CWE|{code}^{_esc(meaning)}^{scheme}||{value}^{value_meaning}^SCT"
            f"||||||F||||||{method}^{method.title()}^{_LOCAL}"
        )
    if event.critical_result_communicated_at_ms is not None:
        segments.append(
            f"OBX|{len(event.findings) + 1}|DTM|CRITCOMM^Critical result communicated^{_LOCAL}"
            f"||{_dtm(event.critical_result_communicated_at_ms)}||||||F"
        )
    segments.append(f"ZDS|{_esc(event.study_uid)}^RIS^Application^DICOM")
    return "\r".join(segments) + "\r"


def mllp_frame(message: str) -> bytes:
    """One message in an MLLP frame (the input format of python-hl7's ``mllp_send``)."""
    return START_BLOCK + message.encode("utf-8") + END_BLOCK


# -- FHIR R4 --------------------------------------------------------------------------

_FHIR_SNOMED = "http://snomed.info/sct"
_FHIR_PRIORITY = {Priority.ROUTINE: "routine", Priority.URGENT: "urgent", Priority.STAT: "stat"}


def _instant(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{ms % 1000:03d}Z"
    )


def fhir_communication(event: AlertEvent) -> dict[str, Any]:
    """The Communication (JSON-ready) an AI platform POSTs for one alert state change.

    Where ``fhir.toml`` reads each field: the site extension, identifier (alert id),
    category (state), medium (channel), priority and the priority-before extension,
    about (the ImagingStudy by ``urn:dicom:uid``), basedOn (the inference, by the id the
    gateway gives its SR), reasonCode (finding), sender (Device: algorithm name and
    version), recipient (PractitionerRole: role, practitioner id), statusReason
    (dismiss reason), sent (event time)."""
    code, meaning, scheme = _finding_code(event.finding_code)
    system = _FHIR_SNOMED if scheme == "SCT" else "urn:imgov:fhir:finding"
    contained: list[dict[str, Any]] = [
        {
            "resourceType": "Device",
            "id": "algorithm",
            "deviceName": [{"name": event.algorithm_name, "type": "user-friendly-name"}],
            "version": [{"value": event.algorithm_version}],
        }
    ]
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "extension": [{"url": "urn:imgov:fhir:site-id", "valueString": event.site_id}],
        "identifier": [{"system": "urn:imgov:fhir:alert-id", "value": event.alert_id}],
        "status": "completed",
        "category": [
            {"coding": [{"system": "urn:imgov:fhir:alert-state", "code": event.state.lower()}]}
        ],
        "medium": [
            {
                "coding": [
                    {
                        "system": "urn:imgov:fhir:alert-channel",
                        "code": event.channel.lower().replace("_", "-"),
                    }
                ]
            }
        ],
        "about": [
            {
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{event.study_uid}"},
            }
        ],
        "reasonCode": [{"coding": [{"system": system, "code": code, "display": meaning}]}],
        "sender": {"reference": "#algorithm"},
        "sent": _instant(event.occurred_at_ms),
    }
    if event.priority_before is not None:
        resource["extension"].append(
            {
                "url": "urn:imgov:fhir:priority-before",
                "valueCode": _FHIR_PRIORITY[event.priority_before],
            }
        )
    if event.priority_after is not None:
        resource["priority"] = _FHIR_PRIORITY[event.priority_after]
    if event.inference_event_id is not None:
        resource["basedOn"] = [
            {
                "identifier": {
                    "system": "urn:imgov:fhir:inference-event-id",
                    "value": sr_event_id(event.inference_event_id, event.finding_code),
                }
            }
        ]
    if event.recipient_role is not None or event.recipient_id is not None:
        role: dict[str, Any] = {"resourceType": "PractitionerRole", "id": "recipient"}
        if event.recipient_role is not None:
            role["code"] = [{"text": event.recipient_role}]
        if event.recipient_id is not None:
            role["practitioner"] = {"identifier": {"value": event.recipient_id}}
        contained.append(role)
        resource["recipient"] = [{"reference": "#recipient"}]
    if event.dismiss_reason is not None:
        resource["statusReason"] = {"text": event.dismiss_reason}
    resource["contained"] = contained
    return resource


# -- DICOM SR (TID 1500) --------------------------------------------------------------

_RUN_STATUS = {
    InferenceStatus.FAILED: hd.sr.CodedConcept("111224", "DCM", "Failed"),
    InferenceStatus.CANCELLED: hd.sr.CodedConcept("111225", "DCM", "Not Attempted"),
    InferenceStatus.TIMED_OUT: hd.sr.CodedConcept("TIMED-OUT", _LOCAL, "Timed out"),
}
_RESULT_VALUE = {
    InferenceResult.POSITIVE: codes.SCT.Present,
    InferenceResult.NEGATIVE: codes.SCT.Absent,
    InferenceResult.INDETERMINATE: hd.sr.CodedConcept("82334004", "SCT", "Indeterminate"),
}
_PROBABILITY = hd.sr.CodedConcept("1", "UCUM", "no units")


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:imgov:simulate:native")


def _uid(*parts: str) -> str:
    """A UID derived from ``parts`` alone (``2.25.`` + a name-based UUID, PS3.5 B.2):
    the same message gets the same UIDs every time it is emitted."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(0).join(parts)).int}"


def sr_sop_instance_uid(inference_event_id: str) -> str:
    """The SOP Instance UID of the SR of the inference with this event id."""
    return _uid("sr", inference_event_id)


def sr_event_id(inference_event_id: str, finding_code: str) -> str:
    """The event id the gateway gives the inference carried by :func:`dicom_sr`
    (``dicom-sr:<SOP instance UID>:<finding code>``, see ``streams.gateway.dicom_sr``)."""
    return f"dicom-sr:{sr_sop_instance_uid(inference_event_id)}:{finding_code}"


def _da_tm(ms: int) -> tuple[str, str]:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S") + f".{ms % 1000:03d}"


def _image(event: InferenceEvent) -> Dataset:
    """The header of one image of the study (the evidence the SR references)."""
    date, time = _da_tm(event.study_available_at_ms or event.occurred_at_ms)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid("image", event.study_uid)
    ds.StudyInstanceUID = event.study_uid
    ds.SeriesInstanceUID = _uid("series", event.study_uid)
    ds.FrameOfReferenceUID = _uid("frame", event.study_uid)
    ds.PatientID = event.patient_id or ""
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.AccessionNumber = event.accession_number or ""
    ds.StudyID = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.ReferringPhysicianName = ""
    ds.Modality = event.modality
    ds.Manufacturer = event.manufacturer or ""
    ds.InstitutionName = event.site_id
    ds.Rows = ds.Columns = 512
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return ds


def _group(event: InferenceEvent) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    code, meaning, scheme = _finding_code(event.finding_code)
    finding = hd.sr.CodedConcept(code, scheme, meaning)
    evaluations = []
    if event.status is InferenceStatus.SUCCEEDED and event.result in _RESULT_VALUE:
        value = _RESULT_VALUE[event.result]
        evaluations.append(hd.sr.QualitativeEvaluation(name=finding, value=value))
    measurements = []
    if event.score is not None:
        measurements.append(
            hd.sr.Measurement(name=codes.DCM.Probability, value=event.score, unit=_PROBABILITY)
        )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("tracking", event.event_id), identifier=event.finding_code
        ),
        finding_type=finding,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=event.algorithm_name, version=event.algorithm_version
        ),
        qualitative_evaluations=evaluations or None,
        measurements=measurements or None,
    )
    items: list[hd.sr.ContentItem] = []
    if event.threshold is not None:
        items.append(
            hd.sr.NumContentItem(
                name=codes.DCM.ThresholdValue,
                value=event.threshold,
                unit=_PROBABILITY,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        )
    if event.status is not InferenceStatus.SUCCEEDED:
        items.append(
            hd.sr.CodeContentItem(
                name=hd.sr.CodedConcept("RUN-STATUS", _LOCAL, "Algorithm run status"),
                value=_RUN_STATUS[event.status],
                relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
            )
        )
        if event.failure_reason is not None:
            items.append(
                hd.sr.TextContentItem(
                    name=hd.sr.CodedConcept("FAILURE-REASON", _LOCAL, "Failure reason"),
                    value=event.failure_reason,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            )
    available = hd.sr.CodedConcept("STUDY-AVAILABLE", _LOCAL, "Study available")
    times = (
        (codes.DCM.DatetimeStarted, event.started_at_ms),
        (available, event.study_available_at_ms),
    )
    for name, ms in times:
        if ms is not None:
            items.append(
                hd.sr.DateTimeContentItem(
                    name=name,
                    value=datetime.fromtimestamp(ms / 1000, UTC),
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT,
                )
            )
    group[0].ContentSequence.extend(items)
    return group


def dicom_sr(event: InferenceEvent) -> Dataset:
    """The Comprehensive 3D SR (TID 1500) an AI platform stores for one inference.

    Where ``dicom_sr.toml`` reads each field: the header (InstitutionName site,
    StudyInstanceUID, AccessionNumber, PatientID, BodyPartExamined, ContentDate/Time
    with TimezoneOffsetFromUTC completion and event time), the image library (Modality,
    Device Manufacturer of the scanner), the measurement group (Finding, TID 4019
    algorithm, evaluation present/absent, Probability, Threshold Value, DateTime Started,
    study available, or the run status and failure reason).
    """
    with warnings.catch_warnings():
        # The clinic's accession numbers have 17 characters, one more than DICOM's SH
        # allows; pydicom warns and keeps them, as many PACS do.
        warnings.filterwarnings("ignore", "The value length", UserWarning)
        return _dicom_sr(event)


def _dicom_sr(event: InferenceEvent) -> Dataset:
    image = _image(event)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("device", event.algorithm_name), name=event.algorithm_name
        ),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[_group(event)],
        referenced_images=[image],
    )
    sop_uid = sr_sop_instance_uid(event.event_id)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image],
        content=content[0],
        series_instance_uid=_uid("sr-series", sop_uid),
        series_number=900,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="imgov simulate",
        institution_name=event.site_id,
        is_complete=True,
    )
    completed = event.completed_at_ms if event.completed_at_ms is not None else event.occurred_at_ms
    date, time = _da_tm(completed)
    for keyword in ("InstanceCreationDate", "SeriesDate", "ContentDate"):
        setattr(sr, keyword, date)
    for keyword in ("InstanceCreationTime", "SeriesTime", "ContentTime"):
        setattr(sr, keyword, time)
    for equipment in sr.get("ContributingEquipmentSequence", []):
        equipment.ContributionDateTime = date + time
    sr.TimezoneOffsetFromUTC = "+0000"
    if event.body_part is not None:
        sr.BodyPartExamined = event.body_part
    if event.manufacturer is not None:
        _library_entry(sr).ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.DeviceManufacturer,
                value=event.manufacturer,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT,
            )
        )
    return sr


def _library_entry(sr: Dataset) -> Dataset:
    """The first container inside the SR's image library (TID 1600)."""
    node: Dataset = next(
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"
    )
    while node.get("ContentSequence"):
        containers = [c for c in node.ContentSequence if c.ValueType == "CONTAINER"]
        if not containers:
            break
        node = containers[0]
    return node


# -- files ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NativeOutput:
    """What :func:`write_native` wrote."""

    hl7: Path | None
    """The MLLP batch file of every report message, in delivery order."""
    fhir: tuple[Path, ...]
    """One Communication JSON file per alert event, in delivery order."""
    dicom_sr: tuple[Path, ...]
    """One DICOM Part 10 file per inference event, in delivery order."""


def write_native(
    directory: Path, events: Iterable[Event], formats: Sequence[NativeFormat] = tuple(NativeFormat)
) -> NativeOutput:
    """Writes ``events`` (in delivery order, duplicates included) in their native formats
    under ``directory``: ``hl7/reports.mllp``, ``fhir/NNNNNNN-communication.json``,
    ``dicom-sr/NNNNNNN.dcm`` (NNNNNNN: the position in the delivery order, so sorted
    names are the delivery order). Event types whose format is not in ``formats`` are
    skipped.

    Raises:
        OSError: a file cannot be written.
    """
    wanted = set(formats)
    hl7_path = directory / "hl7" / "reports.mllp" if NativeFormat.HL7 in wanted else None
    fhir: list[Path] = []
    srs: list[Path] = []
    for folder in wanted:
        (directory / folder.value).mkdir(parents=True, exist_ok=True)
    frames: list[bytes] = []
    for n, event in enumerate(events):
        if isinstance(event, ReportEvent) and hl7_path is not None:
            frames.append(mllp_frame(hl7_message(event)))
        elif isinstance(event, AlertEvent) and NativeFormat.FHIR in wanted:
            path = directory / "fhir" / f"{n:07d}-communication.json"
            path.write_text(json.dumps(fhir_communication(event), indent=1), encoding="utf-8")
            fhir.append(path)
        elif isinstance(event, InferenceEvent) and NativeFormat.DICOM_SR in wanted:
            path = directory / "dicom-sr" / f"{n:07d}.dcm"
            sr = dicom_sr(event)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "The value length", UserWarning)
                sr.save_as(path, enforce_file_format=True)
            srs.append(path)
    if hl7_path is not None:
        hl7_path.write_bytes(b"".join(frames))
    return NativeOutput(hl7_path, tuple(fhir), tuple(srs))
