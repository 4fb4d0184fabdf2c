"""Kafka messages in and out of the live worker, as plain data.

:class:`InputMessage` is what an agent hands to a stage (topic, partition, offset,
key, value, headers). :class:`OutgoingMessage` is what a stage wants produced; the
agents send them. Every output value is Confluent-framed Avro with a registered schema
(``schemas.codec.Codec``); keys are UTF-8 text chosen so that a redelivery of the same
record lands on the same partition and, for the compacted lineage topic, replaces it.
KPI and breach messages carry their identity in the ``imgov.message-id`` header, for
subscribers that drop repeats (delivery is at least once, DESIGN §7).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.records import (
    AuditCheckpoint,
    Breach,
    DeadLetter,
    Header,
    KpiValue,
    LineageRecord,
    ReviewCandidate,
)
from streams.topics import WorkerTopics

__all__ = [
    "CONTROL_CLOSE",
    "CONTROL_HEADER",
    "CONTROL_WATERMARK",
    "MESSAGE_ID_HEADER",
    "WATERMARK_HEADER",
    "InputMessage",
    "OutgoingMessage",
    "OutputEncoder",
    "breach_message_id",
    "dead_letter_for_message",
    "kpi_message_id",
    "kpi_partition_key",
    "kpi_window_key",
    "lineage_key",
    "parse_watermark",
]

CONTROL_HEADER = "imgov.control"
"""Header of control messages on the contributions topic."""
CONTROL_CLOSE = b"close"
"""Idle close: make every KPI window of this partition final (like replay's end)."""
CONTROL_WATERMARK = b"watermark"
"""An upstream input partition's watermark; the value is in ``WATERMARK_HEADER``."""
WATERMARK_HEADER = "imgov.watermark"
"""``<input partition>:<watermark ms>`` or ``<input partition>:idle`` (ASCII)."""

MESSAGE_ID_HEADER = "imgov.message-id"
"""The identity of a KPI or breach message: a subscriber drops a second message with an
identity it has seen (a worker that crashed publishes again what it had not committed)."""

MessageHeaders = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class InputMessage:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: MessageHeaders = ()
    timestamp_ms: int | None = None

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to produce; ``partition`` None lets the key decide."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: MessageHeaders = ()


def lineage_key(record: LineageRecord) -> str:
    """The identity of a lineage row: its Kafka key and its key in KPI state."""
    return json.dumps(
        [record.site_id, record.study_uid, record.algorithm_name, record.finding_code],
        separators=(",", ":"),
        ensure_ascii=False,
    )


def kpi_window_key(v: KpiValue) -> str:
    """The Kafka key of a KPI value: the KPI, its dimensions and its window."""
    return "|".join(
        (
            v.kpi,
            v.window_size,
            v.site_id,
            v.algorithm_name,
            v.algorithm_version,
            v.finding_code,
            str(v.window_start_ms),
        )
    )


def kpi_message_id(v: KpiValue, encoded: bytes) -> str:
    """A KPI message's identity: ``<key>|final|<revision>`` or ``<key>|current|<digest>``.

    A final value and each of its revisions are computed once, deterministically, so the
    window and revision identify them. A current value is republished as the window
    fills (always revision 1): its identity is a digest of its content, so only an
    identical repeat is a duplicate.
    """
    key = kpi_window_key(v)
    if v.final:
        return f"{key}|final|{v.revision}"
    return f"{key}|current|{hashlib.sha256(encoded).hexdigest()[:16]}"


def breach_message_id(b: Breach) -> str:
    """A breach message's identity: ``<breach_id>|OPEN`` or ``<breach_id>|RESOLVED``."""
    return f"{b.breach_id}|{b.state.value}"


def kpi_partition_key(record: LineageRecord) -> bytes:
    """Key of a KPI contribution: every roll-up of a KPI shares algorithm and finding."""
    return f"{record.algorithm_name}|{record.finding_code}".encode()


def dead_letter_for_message(
    message: InputMessage, error: DecodeError, received_at_ms: int
) -> DeadLetter:
    """Returns the dead letter of an input the codec refused, with its original bytes."""
    return DeadLetter(
        reason=error.reason,
        message=f"{message.topic}[{message.partition}]@{message.offset}: {error}",
        key=message.key,
        value=message.value or b"",
        headers=tuple(Header(key=k, value=v) for k, v in message.headers),
        source_topic=message.topic,
        source_partition=message.partition,
        source_offset=message.offset,
        study_uid=_text(message.key),
        received_at_ms=received_at_ms,
    )


def parse_watermark(message: InputMessage) -> tuple[int, int | None]:
    """Returns ``(input partition, watermark ms or None for idle)`` of a watermark record.

    Raises:
        ValueError: the header is missing or malformed (a bug upstream, not bad input).
    """
    raw = message.header(WATERMARK_HEADER)
    if raw is None:
        raise ValueError(f"{message.topic}[{message.partition}]@{message.offset}: no watermark")
    partition, _, value = raw.decode("ascii").partition(":")
    return int(partition), None if value == "idle" else int(value)


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


class OutputEncoder:
    """Turns core outputs into messages for their topics."""

    def __init__(self, codec: Codec, topics: WorkerTopics) -> None:
        self._codec = codec
        self._topics = topics

    def lineage(self, records: Sequence[LineageRecord]) -> list[OutgoingMessage]:
        encode, topic = self._codec.encode, self._topics.lineage
        return [OutgoingMessage(topic, lineage_key(r).encode(), encode(r)) for r in records]

    def lineage_and_contributions(self, records: Sequence[LineageRecord]) -> list[OutgoingMessage]:
        """The lineage messages, then the KPI contributions: one encoding per record."""
        lineage, contributions = self._topics.lineage, self._topics.contributions
        encode = self._codec.encode
        bodies = [encode(r) for r in records]
        return [
            OutgoingMessage(lineage, lineage_key(r).encode(), body)
            for r, body in zip(records, bodies, strict=True)
        ] + [
            OutgoingMessage(contributions, kpi_partition_key(r), body)
            for r, body in zip(records, bodies, strict=True)
        ]

    def contributions(self, records: Sequence[LineageRecord]) -> list[OutgoingMessage]:
        encode, topic = self._codec.encode, self._topics.contributions
        return [OutgoingMessage(topic, kpi_partition_key(r), encode(r)) for r in records]

    def reviews(self, records: Sequence[ReviewCandidate]) -> list[OutgoingMessage]:
        return [
            OutgoingMessage(
                self._topics.review,
                json.dumps(
                    [r.site_id, r.study_uid, r.algorithm_name, r.finding_code],
                    separators=(",", ":"),
                ).encode(),
                self._codec.encode(r),
            )
            for r in records
        ]

    def audit_checkpoints(self, checkpoints: Sequence[AuditCheckpoint]) -> list[OutgoingMessage]:
        """One message per checkpoint, keyed by its input partition (the topic is
        compacted: the latest checkpoint of every partition is kept)."""
        topic = self._topics.audit_checkpoint
        return [
            OutgoingMessage(topic, str(c.partition).encode(), self._codec.encode(c))
            for c in checkpoints
        ]

    def dead_letters(self, letters: Sequence[DeadLetter]) -> list[OutgoingMessage]:
        topic = self._topics.dlq
        return [
            OutgoingMessage(topic, letter.key, self._codec.encode(letter)) for letter in letters
        ]

    def kpis(self, values: Sequence[KpiValue]) -> list[OutgoingMessage]:
        topic = self._topics.kpi
        out = []
        for v in values:
            key = kpi_window_key(v)
            value = self._codec.encode(v)
            message_id = kpi_message_id(v, value).encode()
            out.append(
                OutgoingMessage(
                    topic, key.encode(), value, None, ((MESSAGE_ID_HEADER, message_id),)
                )
            )
        return out

    def breaches(self, breaches: Sequence[Breach]) -> list[OutgoingMessage]:
        topic = self._topics.breach
        return [
            OutgoingMessage(
                topic,
                b.breach_id.encode(),
                self._codec.encode(b),
                None,
                ((MESSAGE_ID_HEADER, breach_message_id(b).encode()),),
            )
            for b in breaches
        ]

    def watermarks(
        self, updates: Sequence[tuple[int, int | None]], partitions: int
    ) -> list[OutgoingMessage]:
        """Each input partition's watermark (None: idle) to every contributions partition.

        Sent after the contributions they cover, by the same producer, so a KPI stage
        has applied every contribution of that input partition the watermark vouches for.
        """
        return [
            OutgoingMessage(
                self._topics.contributions,
                b"__control__",
                b"",
                p,
                (
                    (CONTROL_HEADER, CONTROL_WATERMARK),
                    (WATERMARK_HEADER, f"{upstream}:{'idle' if wm is None else wm}".encode()),
                ),
            )
            for upstream, wm in updates
            for p in range(partitions)
        ]

    def close_markers(self, partitions: int) -> list[OutgoingMessage]:
        """One idle-close control message per partition of the contributions topic."""
        return [
            OutgoingMessage(
                self._topics.contributions,
                b"__control__",
                b"",
                p,
                ((CONTROL_HEADER, CONTROL_CLOSE),),
            )
            for p in range(partitions)
        ]
