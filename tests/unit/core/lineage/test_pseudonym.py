"""Keyed pseudonyms (DESIGN §8) and the key requirement of the lineage config."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from schemas.events import (
    AlertChannel,
    AlertEvent,
    AlertState,
    ReportEvent,
    ReportStatus,
)
from streams.core.lineage.config import DEMO_PSEUDONYM_KEY, LineageConfig
from streams.core.lineage.pseudonym import IdentifierKind, Pseudonymiser

KEY = b"k" * 32
SECRET_KEY = b"a-real-secret-key-of-32-bytes!!!"


def test_refs_are_stable_keyed_hmac_sha256() -> None:
    one = Pseudonymiser(KEY)
    again = Pseudonymiser(KEY)
    other = Pseudonymiser(b"j" * 32)
    ref = one.ref(IdentifierKind.PATIENT, "PAT-1")
    assert ref == again.ref(IdentifierKind.PATIENT, "PAT-1")
    assert ref == hmac.new(KEY, b"patient_id\x00PAT-1", hashlib.sha256).hexdigest()
    assert ref != other.ref(IdentifierKind.PATIENT, "PAT-1")
    assert ref != one.ref(IdentifierKind.PATIENT, "PAT-2")
    assert len(ref) == 64 and int(ref, 16) >= 0


def test_each_kind_of_identifier_has_its_own_domain() -> None:
    p = Pseudonymiser(KEY)
    refs = {p.ref(kind, "12345") for kind in IdentifierKind}
    assert len(refs) == len(IdentifierKind)


def test_optional_and_study_uid() -> None:
    assert Pseudonymiser(KEY).optional_ref(IdentifierKind.ACCESSION, None) is None
    assert Pseudonymiser(KEY).study_uid("1.2.3") == "1.2.3"
    hidden = Pseudonymiser(KEY, pseudonymise_study_uid=True).study_uid("1.2.3")
    assert hidden == Pseudonymiser(KEY).ref(IdentifierKind.STUDY, "1.2.3")


def test_pseudonymise_event_replaces_every_identifier() -> None:
    p = Pseudonymiser(KEY, pseudonymise_study_uid=True)
    report = ReportEvent(
        event_id="e1",
        occurred_at_ms=1,
        site_id="s",
        study_uid="1.2.3",
        patient_id="PAT-1",
        accession_number="ACC-1",
        interpreter_id="RAD-1",
        report_id="r",
        status=ReportStatus.FINAL,
    )
    alert = AlertEvent(
        event_id="e2",
        occurred_at_ms=1,
        site_id="s",
        study_uid="1.2.3",
        alert_id="a",
        algorithm_name="x",
        algorithm_version="1",
        finding_code="ICH",
        state=AlertState.VIEWED,
        channel=AlertChannel.PAGE,
        recipient_id="DR-1",
    )
    for event in (p.pseudonymise_event(report), p.pseudonymise_event(alert)):
        text = event.model_dump_json()
        for identifier in ("PAT-1", "ACC-1", "RAD-1", "DR-1", "1.2.3"):
            assert identifier not in text
    assert p.pseudonymise_event(report).patient_id == p.ref(IdentifierKind.PATIENT, "PAT-1")


def test_no_key_or_identifier_in_reprs() -> None:
    p = Pseudonymiser(SECRET_KEY)
    assert "secret" not in repr(p)
    config = LineageConfig(pseudonym_key=SECRET_KEY)
    assert "secret" not in repr(config) and "secret" not in str(config)
    assert not config.uses_demo_key


def test_config_refuses_to_build_without_a_key_outside_demo_mode() -> None:
    with pytest.raises(ValidationError, match="no pseudonymisation key"):
        LineageConfig()
    demo = LineageConfig(demo=True)
    assert demo.uses_demo_key
    assert demo.pseudonym_key.get_secret_value() == DEMO_PSEUDONYM_KEY
    assert LineageConfig(demo=True, pseudonym_key=SECRET_KEY).pseudonym_key.get_secret_value() == (
        SECRET_KEY
    )


def test_short_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        LineageConfig(pseudonym_key=b"short-secret")
    assert "short-secret" not in str(caught.value)
    assert "at least 32 bytes" in str(caught.value)
