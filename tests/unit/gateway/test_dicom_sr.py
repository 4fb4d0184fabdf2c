"""DICOM SR (IHE AIR, TID 1500) -> InferenceEvent, and the C-STORE SCP that receives it:
hand-written samples that follow the standards (tests/data/dicom_sr), the awkward ones
included, a corpus of bad ones that must be refused and dead-lettered, never crash, and
real senders: pynetdicom's SCU and DCMTK's storescu."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from schemas.errors import ImgovError
from schemas.events import InferenceResult, InferenceStatus
from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from streams.gateway import dicom_sr
from streams.gateway.delivery import DeliveryError, MemoryDelivery
from streams.gateway.dicom_sr import (
    SR_STORAGE_CLASSES,
    DicomScp,
    SrRefused,
    SrStatus,
    inference_events,
    load_dicom_sr_mapping,
    start_dicom_scp,
)
from tests.data.dicom_sr.make_samples import write_samples

DATA = Path(__file__).parents[2] / "data" / "dicom_sr"
SHIPPED = Path(__file__).parents[3] / "streams" / "gateway" / "dicom_sr.toml"
MAPPING = load_dicom_sr_mapping().model_copy(
    update={"sites": {"Example General Hospital": "SITE-01"}}  # the samples' institution
)
CONTENT_AT_MS = 1_767_612_642_250  # 2026-01-05T11:30:42.250Z: ContentDate/Time, UTC


def sample(name: str) -> Dataset:
    return pydicom.dcmread(DATA / name)


def refusal(dataset: Dataset, mapping: Any = MAPPING) -> SrRefused:
    with pytest.raises(SrRefused) as caught:
        inference_events(dataset, mapping)
    return caught.value


def items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for child in node.get("ContentSequence") or ():
        yield child
        yield from items(child)


def concept(item: Dataset) -> str:
    code = item.ConceptNameCodeSequence[0]
    return f"{code.CodeValue}^{code.CodingSchemeDesignator}"


def first(dataset: Dataset, code: str) -> Dataset:
    return next(item for item in items(dataset) if concept(item) == code)


def remove(dataset: Dataset, code: str) -> Dataset:
    """``dataset`` without the content items named ``code``."""
    for node in [dataset, *items(dataset)]:
        if "ContentSequence" in node:
            kept = [c for c in node.ContentSequence if concept(c) != code]
            if kept:
                node.ContentSequence = kept
            else:
                del node.ContentSequence
    return dataset


# -- mapping --------------------------------------------------------------------------------


def test_the_public_names_exist_and_refusals_share_the_root() -> None:
    assert set(dicom_sr.__all__) <= set(dir(dicom_sr))
    assert issubclass(SrRefused, ImgovError)


def test_the_committed_samples_are_what_make_samples_builds(tmp_path: Path) -> None:
    for path in write_samples(tmp_path):
        assert path.read_bytes() == (DATA / path.name).read_bytes(), path.name


def test_a_tid_1500_report_with_a_finding_and_a_score_becomes_one_inference_event() -> None:
    dataset = sample("pe_positive.dcm")
    (event,) = inference_events(dataset, MAPPING)

    assert event.event_id == f"dicom-sr:{dataset.SOPInstanceUID}:PE"
    assert (event.site_id, event.study_uid) == ("SITE-01", dataset.StudyInstanceUID)
    assert (event.accession_number, event.patient_id, event.modality) == ("ACC-1", "MRN123", "CT")
    assert (event.algorithm_name, event.algorithm_version) == ("PE-Detect", "2.1.0")
    assert (event.finding_code, event.status) == ("PE", InferenceStatus.SUCCEEDED)
    assert (event.score, event.threshold, event.result) == (0.93, 0.5, InferenceResult.POSITIVE)
    assert event.occurred_at_ms == event.completed_at_ms == CONTENT_AT_MS
    assert (event.started_at_ms, event.study_available_at_ms) == (None, None)
    # What the gateway produces passes the contract checks the worker applies.
    assert EventValidator(lambda: event.occurred_at_ms).validate(event) == event


def test_a_report_without_a_score_takes_its_result_from_the_qualitative_evaluation() -> None:
    (event,) = inference_events(sample("pe_no_score.dcm"), MAPPING)
    assert (event.score, event.threshold, event.result) == (None, None, InferenceResult.POSITIVE)
    assert event.finding_code == "PE"


def test_two_findings_are_two_events_a_percent_score_is_scaled_and_thresholded() -> None:
    dataset = sample("two_findings.dcm")
    assert dataset.SOPClassUID == SR_STORAGE_CLASSES[1]  # Enhanced SR
    ich, ptx = inference_events(dataset, MAPPING)
    assert (ich.finding_code, ich.algorithm_name, ich.algorithm_version) == (
        "ICH",
        "Neuro-Triage",
        "5.0",
    )
    assert (ich.score, ich.result) == (0.12, InferenceResult.NEGATIVE)  # "Absent" says so
    assert (ptx.finding_code, ptx.algorithm_name) == ("PTX", "Chest-Triage")
    # 87 % and no qualitative evaluation: the PTX threshold (0.6) decides.
    assert (ptx.score, ptx.threshold, ptx.result) == (
        pytest.approx(0.87),
        0.6,
        InferenceResult.POSITIVE,
    )
    assert ich.event_id != ptx.event_id


def test_a_score_without_an_evaluation_or_any_threshold_is_indeterminate(tmp_path: Path) -> None:
    path = tmp_path / "dicom_sr.toml"
    path.write_text(
        SHIPPED.read_text().replace("default_threshold = 0.5", "").replace("PTX = 0.6", "")
    )
    _, ptx = inference_events(sample("two_findings.dcm"), load_dicom_sr_mapping(path))
    assert (ptx.score, ptx.threshold, ptx.result) == (
        pytest.approx(0.87),
        None,
        InferenceResult.INDETERMINATE,
    )


def test_a_stored_twice_instance_gives_the_same_event_ids() -> None:
    assert inference_events(sample("two_findings.dcm"), MAPPING) == inference_events(
        sample("two_findings.dcm"), MAPPING
    )


def test_positive_wins_when_one_finding_is_evaluated_twice() -> None:
    dataset = sample("pe_no_score.dcm")
    group = first(dataset, "125007^DCM")
    absent = Dataset()
    absent.update(group.ContentSequence[-1])
    absent.ConceptCodeSequence[0].CodeValue = "272519000"  # absent
    group.ContentSequence = [*group.ContentSequence, absent]
    (event,) = inference_events(dataset, MAPPING)
    assert event.result == InferenceResult.POSITIVE


def test_an_evaluation_named_by_its_finding_needs_no_finding_item() -> None:
    # A qualitative evaluation "Pulmonary embolism = Present" and a probability in a
    # container without Finding (121071): the score belongs to the one finding named.
    dataset = remove(sample("pe_positive.dcm"), "121071^DCM")
    (event,) = inference_events(dataset, MAPPING)
    assert (event.finding_code, event.result, event.score) == ("PE", InferenceResult.POSITIVE, 0.93)


def test_times_follow_the_timezone_offset_or_else_the_mapping_zone(tmp_path: Path) -> None:
    path = tmp_path / "dicom_sr.toml"
    path.write_text(SHIPPED.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berlin"'))
    berlin = load_dicom_sr_mapping(path)
    dataset = sample("pe_positive.dcm")
    (event,) = inference_events(dataset, berlin)
    assert event.occurred_at_ms == CONTENT_AT_MS - 3_600_000  # CET is UTC+1 in January
    dataset.TimezoneOffsetFromUTC = "-0500"
    (event,) = inference_events(dataset, berlin)
    assert event.occurred_at_ms == CONTENT_AT_MS + 5 * 3_600_000


def test_site_falls_back_to_the_institution_then_the_configured_default(tmp_path: Path) -> None:
    dataset = sample("pe_positive.dcm")
    dataset.InstitutionName = "St Elsewhere"
    assert inference_events(dataset, MAPPING)[0].site_id == "St Elsewhere"
    del dataset.InstitutionName
    assert refusal(dataset).status == SrStatus.MISSING_ATTRIBUTE
    path = tmp_path / "dicom_sr.toml"
    path.write_text(SHIPPED.read_text().replace('default_site_id = ""', 'default_site_id = "S9"'))
    assert inference_events(dataset, load_dicom_sr_mapping(path))[0].site_id == "S9"


def test_an_unmapped_finding_refuses_the_report_unless_the_mapping_ignores_it(
    tmp_path: Path,
) -> None:
    dataset = sample("two_findings.dcm")
    first(dataset, "121071^DCM").ConceptCodeSequence[0].CodeValue = "404684003"
    first(dataset, "1386000^SCT").ConceptNameCodeSequence[0].CodeValue = "404684003"
    error = refusal(dataset)
    assert (error.status, error.dead_letter_reason) == (
        SrStatus.NO_RESULT,
        DeadLetterReason.VALIDATION_FAILED,
    )
    assert "404684003^SCT" in error.reason
    path = tmp_path / "dicom_sr.toml"
    path.write_text(
        SHIPPED.read_text().replace(
            "ignore_unmapped_findings = false", "ignore_unmapped_findings = true"
        )
    )
    (ptx,) = inference_events(dataset, load_dicom_sr_mapping(path))
    assert ptx.finding_code == "PTX"


def _set_score(value: float, unit: str = "1") -> Callable[[Dataset], Dataset]:
    def mutate(dataset: Dataset) -> Dataset:
        measured = first(dataset, "122157^DCM").MeasuredValueSequence[0]
        measured.NumericValue = value
        if "FloatingPointValue" in measured:
            del measured.FloatingPointValue
        measured.MeasurementUnitsCodeSequence[0].CodeValue = unit
        return dataset

    return mutate


def _set(keyword: str, value: Any) -> Callable[[Dataset], Dataset]:
    def mutate(dataset: Dataset) -> Dataset:
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
        return dataset

    return mutate


def _root_concept(dataset: Dataset) -> Dataset:
    dataset.ConceptNameCodeSequence[0].CodeValue = "18748-4"  # LOINC: diagnostic imaging report
    return dataset


def _no_version(dataset: Dataset) -> Dataset:
    return remove(dataset, "111003^DCM")


def _no_evaluation(dataset: Dataset) -> Dataset:
    remove(dataset, "122157^DCM")
    return remove(dataset, "59282003^SCT")  # the evaluation named by its finding


BAD: list[tuple[str, str, Callable[[Dataset], Dataset], int]] = [
    ("ct-image", "ct_image.dcm", lambda d: d, SrStatus.SOP_CLASS_MISMATCH),
    (
        "basic-text-sr",
        "pe_positive.dcm",
        _set("SOPClassUID", "1.2.840.10008.5.1.4.1.1.88.11"),
        0xA900,
    ),
    ("no-content", "pe_positive.dcm", _set("ContentSequence", None), SrStatus.SOP_CLASS_MISMATCH),
    ("not-tid-1500", "pe_positive.dcm", _root_concept, SrStatus.CANNOT_UNDERSTAND),
    ("no-study-uid", "pe_positive.dcm", _set("StudyInstanceUID", None), SrStatus.MISSING_ATTRIBUTE),
    ("no-content-date", "pe_positive.dcm", _set("ContentDate", None), SrStatus.MISSING_ATTRIBUTE),
    ("bad-content-time", "pe_positive.dcm", _set("ContentTime", "25"), SrStatus.MISSING_ATTRIBUTE),
    ("bad-content-date", "pe_positive.dcm", _set("ContentDate", "20261305"), 0xC001),
    ("bad-tz-offset", "pe_positive.dcm", _set("TimezoneOffsetFromUTC", "CET"), 0xC001),
    ("no-modality", "pe_positive.dcm", lambda d: remove(d, "121139^DCM"), 0xC001),
    ("no-algorithm", "no_algorithm.dcm", lambda d: d, SrStatus.NO_ALGORITHM),
    ("no-algorithm-version", "pe_positive.dcm", _no_version, SrStatus.NO_ALGORITHM),
    ("no-finding", "pe_positive.dcm", lambda d: remove(d, "125007^DCM"), SrStatus.NO_RESULT),
    ("finding-without-result", "pe_positive.dcm", _no_evaluation, SrStatus.NO_RESULT),
    ("score-above-1", "pe_positive.dcm", _set_score(1.5), SrStatus.BAD_SCORE),
    ("score-negative", "pe_positive.dcm", _set_score(-0.1), SrStatus.BAD_SCORE),
    ("score-in-mm", "pe_positive.dcm", _set_score(0.5, "mm"), SrStatus.BAD_SCORE),
]


# pydicom warns about the malformed dates and times: they are the point.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("name", "mutate", "status"),
    [(f, m, s) for _, f, m, s in BAD],
    ids=[case[0] for case in BAD],
)
def test_non_conforming_reports_are_refused_with_their_status(
    name: str, mutate: Callable[[Dataset], Dataset], status: int
) -> None:
    dataset = mutate(sample(name))
    error = refusal(dataset)
    assert error.status == status, error
    assert "MRN123" not in str(error) and "ACC-1" not in str(error)  # no identifier


def test_reasons_map_to_dead_letter_reasons() -> None:
    assert SrRefused(0xA900, "x").dead_letter_reason == DeadLetterReason.UNKNOWN_SCHEMA
    assert SrRefused(0xC000, "x").dead_letter_reason == DeadLetterReason.UNDECODABLE
    assert SrRefused(0xC004, "x").dead_letter_reason == DeadLetterReason.VALIDATION_FAILED


# pydicom warns about each value that breaks its VR's rules: that is the point here.
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_files_are_refused_or_mapped_never_a_crash() -> None:
    rng = random.Random(14)
    original = (DATA / "two_findings.dcm").read_bytes()
    read = 0
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(132, len(data))] = rng.randrange(256)
        try:
            dataset = pydicom.dcmread(BytesIO(bytes(data)))
        except Exception:
            continue  # the SCP answers what pydicom cannot read with 0xC000 (tested below)
        read += 1
        try:
            inference_events(dataset, MAPPING)
        except SrRefused as error:
            assert 0xA900 <= error.status <= 0xCFFF
    assert read > 100


def test_a_mapping_with_a_bad_entry_names_it(tmp_path: Path) -> None:
    path = tmp_path / "dicom_sr.toml"
    for text, entry in [
        ('[fields]\nsite_id = "Institution"\n', "site_id"),
        ('[results]\n"1^X" = "MAYBE"\n', "results"),
        ('[results]\n"1^X" = "NOT_APPLICABLE"\n', "results"),
        ('[message]\ntimezone = "Mars/Olympus"\n', "message"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=entry):
            load_dicom_sr_mapping(path)


# -- the SCP --------------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The gateway's event loop, running in its own thread as in the gateway process."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


class Scp:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout_s: float = 30.0,
        validator: EventValidator | None = None,
    ) -> None:
        self.loop = loop
        self.delivery = MemoryDelivery()
        self.server = start_dicom_scp(
            MAPPING,
            self.delivery,
            loop,
            host="127.0.0.1",
            port=0,
            ae_title="IMGOV",
            timeout_s=timeout_s,
            validator=validator,
            clock=lambda: 42,
        )
        self.port = DicomScp(self.server).port

    def on_loop(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)


@pytest.fixture
def scp(loop: asyncio.AbstractEventLoop) -> Iterator[Scp]:
    server = Scp(loop)
    yield server
    server.server.shutdown()


def store(port: int, *datasets: Dataset, sop_class: str | None = None) -> list[int]:
    """Stores ``datasets`` over one association with pynetdicom's SCU; their statuses."""
    ae = AE(ae_title="TESTSCU")
    for uid in {sop_class or d.SOPClassUID for d in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMGOV")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(d).Status) for d in datasets]
    finally:
        assoc.release()


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file, after its preamble and file meta group."""
    assert part10[128:132] == b"DICM"
    meta_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value
    return part10[144 + meta_length :]


def test_the_scp_delivers_every_event_before_answering_success(scp: Scp) -> None:
    datasets = [sample(n) for n in ("pe_positive.dcm", "pe_no_score.dcm", "two_findings.dcm")]
    assert store(scp.port, *datasets) == [0x0000] * 3
    expected = [e for d in datasets for e in inference_events(d, MAPPING)]
    assert scp.delivery.events() == expected
    delivered = scp.delivery.delivered
    assert delivered[0].source.startswith("dicom://TESTSCU@127.0.0.1:")
    assert delivered[0].control_id == datasets[0].SOPInstanceUID
    assert scp.delivery.dead_letters == []


def test_success_is_not_answered_while_the_delivery_is_in_flight(scp: Scp) -> None:
    scp.delivery.gate = gate = scp.on_loop(_new_event())
    answer: list[list[int]] = []
    sender = threading.Thread(
        target=lambda: answer.append(store(scp.port, sample("pe_positive.dcm")))
    )
    sender.start()
    scp.on_loop(scp.delivery.entered.wait())
    assert answer == [] and scp.delivery.delivered == []
    scp.loop.call_soon_threadsafe(gate.set)
    sender.join(10)
    assert answer == [[0x0000]]
    assert len(scp.delivery.delivered) == 1


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def test_a_non_conforming_report_is_refused_and_dead_lettered_with_its_bytes(scp: Scp) -> None:
    dataset = sample("no_algorithm.dcm")
    assert store(scp.port, dataset) == [SrStatus.NO_ALGORITHM]
    assert scp.delivery.delivered == []
    (letter,) = scp.delivery.dead_letters
    assert letter.reason == DeadLetterReason.VALIDATION_FAILED
    assert "0xC002" in letter.message and "algorithm" in letter.message
    assert "MRN123" not in letter.message and "ACC-1" not in letter.message
    assert pydicom.dcmread(BytesIO(letter.value)) == dataset  # a DICOM Part 10 file
    assert dataset_bytes(letter.value) == dataset_bytes((DATA / "no_algorithm.dcm").read_bytes())
    assert letter.study_uid == dataset.StudyInstanceUID
    assert letter.key == dataset.StudyInstanceUID.encode()
    assert letter.received_at_ms == 42
    headers = {h.key: h.value for h in letter.headers}
    assert headers["imgov.source"].startswith(b"dicom://TESTSCU@127.0.0.1:")
    assert headers["imgov.control-id"] == dataset.SOPInstanceUID.encode()
    assert headers["dicom.status"] == b"0xC002"
    assert headers["dicom.sop_class_uid"] == dataset.SOPClassUID.encode()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_bad_report_is_answered_with_its_failure_and_dead_lettered(scp: Scp) -> None:
    # Every case a sender can offer on an SR context (the CT image and the Basic Text SR
    # are refused at association negotiation).
    mutated = [(mutate(sample(name)), status) for _, name, mutate, status in BAD]
    corpus = [(d, status) for d, status in mutated if d.SOPClassUID in SR_STORAGE_CLASSES]
    assert len(corpus) == len(BAD) - 2
    sent = [dataset for dataset, _ in corpus]
    assert store(scp.port, *sent) == [status for _, status in corpus]
    assert scp.delivery.delivered == []
    letters = scp.delivery.dead_letters
    assert len(letters) == len(sent)  # nothing lost: one dead letter per refusal
    for letter, dataset in zip(letters, sent, strict=True):
        assert pydicom.dcmread(BytesIO(letter.value)) == dataset


def test_a_wrong_sop_class_is_refused_at_association_negotiation(scp: Scp) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="IMGOV")
    try:
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [CTImageStorage]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(sample("ct_image.dcm"))
    finally:
        assoc.release()
    assert scp.delivery.delivered == [] and scp.delivery.dead_letters == []


def test_an_image_sent_as_an_sr_is_refused_with_0xa900_and_dead_lettered(scp: Scp) -> None:
    image = sample("ct_image.dcm")
    image.SOPClassUID = ComprehensiveSRStorage
    assert store(scp.port, image) == [SrStatus.SOP_CLASS_MISMATCH]
    (letter,) = scp.delivery.dead_letters
    assert letter.reason == DeadLetterReason.UNKNOWN_SCHEMA
    assert pydicom.dcmread(BytesIO(letter.value)).PixelData == image.PixelData


def test_a_delivery_failure_is_answered_0xa700_and_the_retry_succeeds(scp: Scp) -> None:
    scp.delivery.failure = DeliveryError("broker down")
    dataset = sample("pe_positive.dcm")
    assert store(scp.port, dataset) == [SrStatus.OUT_OF_RESOURCES]
    # A refusal cannot be recorded either: 0xA700 too, so the sender keeps it.
    assert store(scp.port, sample("no_algorithm.dcm")) == [SrStatus.OUT_OF_RESOURCES]
    assert scp.delivery.delivered == [] and scp.delivery.dead_letters == []
    scp.delivery.failure = None
    assert store(scp.port, dataset) == [0x0000]
    assert scp.delivery.events() == inference_events(dataset, MAPPING)


def test_a_delivery_that_does_not_return_in_time_is_answered_0xa700(
    loop: asyncio.AbstractEventLoop,
) -> None:
    slow = Scp(loop, timeout_s=0.2)
    try:
        slow.delivery.gate = slow.on_loop(_new_event())  # never set: Kafka hangs
        assert store(slow.port, sample("pe_positive.dcm")) == [SrStatus.OUT_OF_RESOURCES]
        assert slow.delivery.delivered == []
    finally:
        slow.server.shutdown()


def test_undecodable_bytes_are_refused_with_0xc000_and_dead_lettered(
    scp: Scp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The content tree's element says it has a VR that does not exist. Given a path, and
    # with chunked sending on, pynetdicom's SCU sends the file's bytes as they are.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    original = (DATA / "pe_positive.dcm").read_bytes()
    content_sequence = b"\x40\x00\x30\xa7SQ"  # (0040,A730) SQ
    broken = original.replace(content_sequence, b"\x40\x00\x30\xa7ZZ", 1)  # the root's
    path = tmp_path / "broken.dcm"
    path.write_bytes(broken)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(SR_STORAGE_CLASSES[2], ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="IMGOV")
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status.Status == SrStatus.CANNOT_UNDERSTAND
    (letter,) = scp.delivery.dead_letters
    assert letter.reason == DeadLetterReason.UNDECODABLE
    assert dataset_bytes(letter.value) == dataset_bytes(broken)
    assert letter.study_uid == pydicom.dcmread(DATA / "pe_positive.dcm").StudyInstanceUID
    assert scp.delivery.delivered == []


def test_events_that_break_a_contract_rule_are_refused_with_0xc005(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # The gateway's clock says 2025: a result made in January 2026 is from the future.
    strict = Scp(loop, validator=EventValidator(lambda: CONTENT_AT_MS - 365 * 86_400_000))
    try:
        assert store(strict.port, sample("pe_positive.dcm")) == [SrStatus.INVALID_EVENT]
        (letter,) = strict.delivery.dead_letters
        assert letter.reason == DeadLetterReason.VALIDATION_FAILED
        assert "occurred_at_ms" in letter.message
        assert strict.delivery.delivered == []
    finally:
        strict.server.shutdown()


def test_stop_answers_the_store_in_flight_aborts_idle_associations_and_closes_the_port(
    loop: asyncio.AbstractEventLoop,
) -> None:
    scp = Scp(loop)
    idle = AE(ae_title="IDLE")
    idle.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    waiting = idle.associate("127.0.0.1", scp.port, ae_title="IMGOV")
    assert waiting.is_established
    scp.delivery.gate = gate = scp.on_loop(_new_event())
    answer: list[list[int]] = []
    sender = threading.Thread(
        target=lambda: answer.append(store(scp.port, sample("pe_positive.dcm")))
    )
    sender.start()
    scp.on_loop(scp.delivery.entered.wait())
    stopping = asyncio.run_coroutine_threadsafe(DicomScp(scp.server).stop(10), loop)
    waiting_aborted = threading.Event()
    # The idle association is aborted while the busy one is still being answered.
    threading.Thread(target=lambda: (waiting.join(10), waiting_aborted.set())).start()
    assert waiting_aborted.wait(10) and waiting.is_aborted
    assert not stopping.done() and answer == []
    refused = AE(ae_title="LATE")
    refused.add_requested_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    assert not refused.associate("127.0.0.1", scp.port, ae_title="IMGOV").is_established
    loop.call_soon_threadsafe(gate.set)
    assert stopping.result(10) is True
    sender.join(10)
    assert answer == [[0x0000]] and len(scp.delivery.delivered) == 1


def test_stop_reports_a_store_it_could_not_wait_for(loop: asyncio.AbstractEventLoop) -> None:
    scp = Scp(loop, timeout_s=2)
    scp.delivery.gate = scp.on_loop(_new_event())  # never set: Kafka hangs
    sender = threading.Thread(target=lambda: _store_quietly(scp.port, sample("pe_positive.dcm")))
    sender.start()
    scp.on_loop(scp.delivery.entered.wait())
    assert scp.on_loop(DicomScp(scp.server).stop(0.2)) is False
    sender.join(10)
    assert scp.delivery.delivered == []


def _store_quietly(port: int, dataset: Dataset) -> None:
    with contextlib.suppress(Exception):  # the association is aborted under it
        store(port, dataset)


def test_c_echo_is_answered(scp: Scp) -> None:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="IMGOV")
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# -- DCMTK's storescu -------------------------------------------------------------------------


@pytest.fixture
def storescu() -> str:
    binary = shutil.which("storescu")
    if binary is None:
        message = "DCMTK's storescu is not installed (bash infra/dicom/install.sh)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return binary


def send(storescu: str, port: int, *names: str) -> subprocess.CompletedProcess[str]:
    # -R: propose only the presentation contexts the files need (storescu's default list
    # has no Comprehensive 3D SR); -v: log each response status.
    command = [storescu, "-R", "-v", "-aet", "STORESCU", "-aec", "IMGOV", "127.0.0.1", str(port)]
    return subprocess.run(
        [*command, *(str(DATA / n) for n in names)], capture_output=True, text=True, timeout=60
    )


def test_storescu_stores_every_sample_sr(storescu: str, scp: Scp) -> None:
    names = ("pe_positive.dcm", "pe_no_score.dcm", "two_findings.dcm")
    run = send(storescu, scp.port, *names)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("Received Store Response (Success)") == 3
    assert scp.delivery.events() == [e for n in names for e in inference_events(sample(n), MAPPING)]
    assert scp.delivery.delivered[0].source.startswith("dicom://STORESCU@127.0.0.1:")


def test_storescu_is_told_cannot_understand_and_the_file_is_dead_lettered(
    storescu: str, scp: Scp
) -> None:
    run = send(storescu, scp.port, "no_algorithm.dcm")
    assert run.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in run.stderr
    (letter,) = scp.delivery.dead_letters
    original = (DATA / "no_algorithm.dcm").read_bytes()
    assert dataset_bytes(letter.value) == dataset_bytes(original)  # the bytes it sent
    assert scp.delivery.delivered == []


def test_storescu_cannot_send_a_ct_image(storescu: str, scp: Scp) -> None:
    run = send(storescu, scp.port, "ct_image.dcm")
    assert run.returncode != 0
    assert "No Acceptable Presentation Contexts" in run.stderr
    assert scp.delivery.delivered == [] and scp.delivery.dead_letters == []


def test_storescu_sees_0xa700_while_kafka_is_down(storescu: str, scp: Scp) -> None:
    scp.delivery.failure = DeliveryError("broker down")
    run = send(storescu, scp.port, "pe_positive.dcm")
    assert run.returncode != 0
    assert "Received Store Response (Refused: OutOfResources)" in run.stderr
    assert scp.delivery.delivered == [] and scp.delivery.dead_letters == []


# -- run status, operating point, times, body part, scanner manufacturer (issue 14: what
# the clinic simulator's SR emitter sends, streams.simulate.native) -----------------------


def simulated_inference(**changes: Any) -> Any:
    from schemas.events import InferenceEvent

    fields: dict[str, Any] = {
        "event_id": "6f1c5f0e-0000-4000-8000-000000000001",
        "occurred_at_ms": CONTENT_AT_MS,
        "site_id": "site-02",
        "study_uid": "1.2.826.0.1.3680043.10.2.20260105.7",
        "accession_number": "A002260105007",
        "patient_id": "P0021234567",
        "modality": "CT",
        "body_part": "HEAD",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "algorithm_name": "ich-detect",
        "algorithm_version": "2.3.1",
        "finding_code": "ICH",
        "status": InferenceStatus.SUCCEEDED,
        "score": 0.55,
        "threshold": 0.6,
        "result": InferenceResult.NEGATIVE,
        "study_available_at_ms": CONTENT_AT_MS - 200_000,
        "started_at_ms": CONTENT_AT_MS - 150_000,
        "completed_at_ms": CONTENT_AT_MS,
    }
    return InferenceEvent(**{**fields, **changes})


def simulated_sr(**changes: Any) -> Dataset:
    from streams.simulate.native import dicom_sr as emit

    return reread(emit(simulated_inference(**changes)))


def reread(dataset: Dataset) -> Dataset:
    """The dataset as the SCP decodes it from a Part 10 file."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(BytesIO(buffer.getvalue()))


def test_times_body_part_and_scanner_manufacturer_are_read() -> None:
    (event,) = inference_events(simulated_sr(), MAPPING)
    assert event.body_part == "HEAD"  # the header's BodyPartExamined
    assert event.manufacturer == "GE MEDICAL SYSTEMS"  # image library: Device Manufacturer
    assert event.study_available_at_ms == CONTENT_AT_MS - 200_000
    assert event.started_at_ms == CONTENT_AT_MS - 150_000  # DateTime Started (111526)
    assert event.completed_at_ms == event.occurred_at_ms == CONTENT_AT_MS


def test_the_stated_threshold_value_decides_a_score_without_an_evaluation() -> None:
    # Without its qualitative evaluation (concept name: the finding, ICH).
    (event,) = inference_events(remove(simulated_sr(), "1386000^SCT"), MAPPING)
    # 0.55 is above the mapping's default_threshold (0.5), below the stated 0.6.
    assert (event.score, event.threshold, event.result) == (0.55, 0.6, InferenceResult.NEGATIVE)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (InferenceStatus.FAILED, "SERIES_NOT_FOUND"),
        (InferenceStatus.TIMED_OUT, "TIMEOUT"),
        (InferenceStatus.CANCELLED, None),
    ],
)
def test_a_group_whose_run_failed_is_an_inference_of_that_status(
    status: InferenceStatus, reason: str | None
) -> None:
    dataset = simulated_sr(
        status=status, failure_reason=reason, score=None, result=InferenceResult.NOT_APPLICABLE
    )
    (event,) = inference_events(dataset, MAPPING)
    assert (event.status, event.failure_reason) == (status, reason)
    assert (event.result, event.score, event.threshold) == (
        InferenceResult.NOT_APPLICABLE,
        None,
        0.6,
    )
    assert (event.algorithm_name, event.finding_code) == ("ich-detect", "ICH")


def test_without_a_status_concept_a_failed_group_is_still_refused() -> None:
    dataset = simulated_sr(
        status=InferenceStatus.FAILED, score=None, result=InferenceResult.NOT_APPLICABLE
    )
    mapping = MAPPING.model_copy(update={"status": type(MAPPING.status)()})
    assert refusal(dataset, mapping).status == SrStatus.NO_RESULT


def test_a_datetime_item_that_is_no_dicom_dt_is_refused() -> None:
    dataset = simulated_sr()
    started = first(dataset, "111526^DCM")  # DateTime Started
    with pytest.warns(UserWarning, match="Invalid value for VR DT"):
        started.DateTime = "2026-01-05T11:00"
    assert refusal(dataset).status == SrStatus.MISSING_ATTRIBUTE
