"""Plain regression tests of the bugs the fuzz tests found (each also an ``@example``).

Each failed before its fix: the input was answered as an internal error (HL7, 207) or
refused as undecodable (DICOM SR, 0xC000) instead of being refused for what is wrong
with it.
"""

from __future__ import annotations

import asyncio
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

import pydicom
import pytest

from schemas.records import DeadLetterReason
from streams.gateway.delivery import MemoryDelivery
from streams.gateway.dicom_sr import SrRefused, SrStatus, inference_events, load_dicom_sr_mapping
from streams.gateway.hl7 import Hl7Error, Hl7Refused, _epoch_ms
from tests.unit.fuzz.test_fuzz_hl7 import SOURCE, _err, _listener, _msa, _result_time

DATA = Path(__file__).parents[2] / "data"


@pytest.mark.parametrize("text", ["00010101+1400", "0001+0500", "99991231235959-1200"])
def test_an_hl7_time_outside_the_calendar_in_utc_is_a_data_type_error(text: str) -> None:
    with pytest.raises(Hl7Refused) as caught:
        _epoch_ms(text, ZoneInfo("UTC"), "OBR-22")
    assert (caught.value.code, caught.value.location) == (Hl7Error.DATA_TYPE, "OBR-22")


def test_such_a_message_is_answered_ae_102_and_dead_lettered_not_an_internal_error() -> None:
    data = _result_time(b"00010101+1400")
    delivery = MemoryDelivery()
    ack = asyncio.run(_listener(delivery).answer(data, SOURCE))
    assert _msa(ack)[1] == "AE"
    assert _err(ack)[3].startswith("102^")  # data type error, not 207 (application error)
    (letter,) = delivery.dead_letters
    assert (letter.value, letter.reason) == (data, DeadLetterReason.VALIDATION_FAILED)
    assert "OBR-22" in letter.message


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "attributes",
    [
        {"TimezoneOffsetFromUTC": "+2500"},
        {"ContentDate": "99991231", "ContentTime": "235959", "TimezoneOffsetFromUTC": "-0500"},
        {"ContentDate": "00010101", "ContentTime": "000000", "TimezoneOffsetFromUTC": "+0500"},
    ],
)
def test_a_dicom_content_time_outside_the_calendar_is_a_missing_attribute(
    attributes: dict[str, str],
) -> None:
    dataset = pydicom.dcmread(BytesIO((DATA / "dicom_sr" / "pe_positive.dcm").read_bytes()))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    with pytest.raises(SrRefused) as caught:
        inference_events(dataset, load_dicom_sr_mapping())
    assert caught.value.status == SrStatus.MISSING_ATTRIBUTE, caught.value
    assert caught.value.dead_letter_reason == DeadLetterReason.VALIDATION_FAILED
