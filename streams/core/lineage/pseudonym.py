"""Keyed pseudonyms for direct identifiers (DESIGN §8).

``patient_id``, ``accession_number``, ``recipient_id`` and ``interpreter_id`` never reach
an output: they become ``*_ref`` = hex HMAC-SHA256 under a secret, site-independent
key, so the same patient gets the same reference at every site and in every run with
the same key, and nobody without the key can recompute or reverse it. A setting
pseudonymises ``study_uid`` too.

Each kind of identifier is hashed in its own domain (``kind NUL value``), so an
accession number that happens to equal a patient id does not produce the same
reference and the two cannot be linked through their pseudonyms.

Nothing here logs, and neither the key nor any identifier appears in a repr or an
exception message.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent

__all__ = ["IdentifierKind", "Pseudonymiser"]


class IdentifierKind(StrEnum):
    """The domain an identifier is hashed in; part of the HMAC input."""

    PATIENT = "patient_id"
    ACCESSION = "accession_number"
    RECIPIENT = "recipient_id"
    INTERPRETER = "interpreter_id"
    STUDY = "study_uid"


# The HMAC input is b"<kind>\x00<identifier>"; prefixes computed once (hot path).
_DOMAINS = {kind: kind.value.encode() + b"\x00" for kind in IdentifierKind}


_STUDY = IdentifierKind.STUDY  # a global: reading an enum member costs more (hot path)

_MEMO_SIZE = 32_768
"""References remembered per kind of identifier. Events of one study repeat its patient
and accession number (and study UID), so most lookups hit; a full memo starts over."""


class Pseudonymiser:
    """Turns identifiers into keyed references. Stateless apart from the key and a
    bounded memo of recent references (an HMAC costs more than the rest of an event's
    fold; the memo is in memory only and appears in no repr).

    Args:
        key: the secret HMAC key (see :class:`streams.core.lineage.config.LineageConfig`).
        pseudonymise_study_uid: whether :meth:`study_uid` pseudonymises or passes
            study UIDs through.
    """

    __slots__ = ("_keyed", "_memo", "_pseudonymise_study_uid")

    def __init__(self, key: bytes, *, pseudonymise_study_uid: bool = False) -> None:
        if not key:
            raise ValueError("a pseudonymisation key is required")
        # Keyed once: copying a keyed HMAC costs a fraction of a one-shot hmac.digest,
        # which makes OpenSSL 3 look the algorithm up again on every call.
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._pseudonymise_study_uid = pseudonymise_study_uid
        self._memo: dict[IdentifierKind, dict[str, str]] = {kind: {} for kind in IdentifierKind}

    def __repr__(self) -> str:
        return f"Pseudonymiser(pseudonymise_study_uid={self._pseudonymise_study_uid})"

    def ref(self, kind: IdentifierKind, value: str) -> str:
        """Returns the 64-character hex reference of one identifier."""
        memo = self._memo[kind]
        ref = memo.get(value)
        if ref is None:
            mac = self._keyed.copy()
            mac.update(_DOMAINS[kind] + value.encode("utf-8"))
            ref = mac.hexdigest()
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[value] = ref
        return ref

    def optional_ref(self, kind: IdentifierKind, value: str | None) -> str | None:
        """Returns the reference of an identifier, or None when there is none."""
        return None if value is None else self.ref(kind, value)

    def study_uid(self, study_uid: str) -> str:
        """Returns the study UID as outputs carry it: kept, or pseudonymised by setting."""
        if self._pseudonymise_study_uid:
            return self.ref(_STUDY, study_uid)
        return study_uid

    def pseudonymise_event(self, event: Event) -> Event:
        """Returns a copy of an input event with every direct identifier replaced.

        For outputs that keep input events (the ClickHouse ``event_log``): each
        identifier field then holds its reference instead of the identifier.
        """
        update: dict[str, str | None] = {}
        if isinstance(event, InferenceEvent | ReportEvent):
            update["patient_id"] = self.optional_ref(IdentifierKind.PATIENT, event.patient_id)
            update["accession_number"] = self.optional_ref(
                IdentifierKind.ACCESSION, event.accession_number
            )
        if isinstance(event, ReportEvent):
            update["interpreter_id"] = self.optional_ref(
                IdentifierKind.INTERPRETER, event.interpreter_id
            )
        if isinstance(event, AlertEvent):
            update["recipient_id"] = self.optional_ref(IdentifierKind.RECIPIENT, event.recipient_id)
        update["study_uid"] = self.study_uid(event.study_uid)
        return event.model_copy(update=update)
