"""The exceptions imgov raises on purpose: one root, typed decode errors.

Every other package imports its exceptions' root from here. The tree::

    ImgovError                        the single root: ``except ImgovError`` catches them all
    ├── SchemaError                   a schema, or the registry holding it, is wrong or unreachable;
    │   │                             an operator or a developer must act (never a dead letter)
    │   ├── SchemaNotFoundError       a subject, version or schema id is not registered
    │   ├── RegistryUnavailableError  the HTTP schema registry did not answer: transient,
    │   │                             back off and retry without committing offsets
    │   ├── IncompatibleSchemaError   a schema change is not BACKWARD compatible
    │   └── EncodeError               a record does not fit its schema (a bug in the producer)
    └── DecodeError                   one input cannot be accepted; it becomes a dead letter
        │                             with ``reason`` (DESIGN §6) and a message a person can act on
        ├── OversizedError            OVERSIZED: larger than the configured limit
        ├── UndecodableError          UNDECODABLE: not Confluent-framed Avro / not JSON / truncated
        ├── UnknownSchemaError        UNKNOWN_SCHEMA: schema id not registered, or not readable
        │                             as the expected record
        └── ValidationFailedError     VALIDATION_FAILED: decoded, but a value breaks a rule

Messages never contain the value of a direct identifier (``patient_id``,
``accession_number``, ``recipient_id``, ``interpreter_id``; DESIGN §8): they name the field.
"""

from __future__ import annotations

from typing import ClassVar

from schemas.records import DeadLetterReason

__all__ = [
    "DecodeError",
    "EncodeError",
    "ImgovError",
    "IncompatibleSchemaError",
    "OversizedError",
    "RegistryUnavailableError",
    "SchemaError",
    "SchemaNotFoundError",
    "UndecodableError",
    "UnknownSchemaError",
    "ValidationFailedError",
]


class ImgovError(Exception):
    """Root of every exception imgov raises on purpose."""


class SchemaError(ImgovError):
    """A schema, or the registry that holds it, is wrong or unreachable."""


class SchemaNotFoundError(SchemaError):
    """A subject, a version or a schema id is not registered."""


class RegistryUnavailableError(SchemaError):
    """The schema registry could not be reached or failed; retrying may succeed."""


class IncompatibleSchemaError(SchemaError):
    """A schema cannot read data written with an earlier version of itself.

    Attributes:
        problems: One line per incompatibility, each naming the field path.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class EncodeError(SchemaError):
    """A record could not be encoded with its schema."""


class DecodeError(ImgovError):
    """One input (a Kafka message, a file line) cannot be accepted.

    Raised by ``schemas.codec``, ``schemas.validation`` and ``schemas.files``; the runtime
    turns it into a dead letter carrying ``reason`` and ``str(error)``.

    Attributes:
        reason: The dead-letter reason code (DESIGN §6).
        field: The offending field, when one is to blame.
        schema_id: The writer schema id, when it is known.
    """

    reason: ClassVar[DeadLetterReason]

    def __init__(
        self, message: str, *, field: str | None = None, schema_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.schema_id = schema_id

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the keyword-only attributes when the error crosses a process boundary.
        return (_rebuild, (type(self), self.message, self.field, self.schema_id))


def _rebuild(
    cls: type[DecodeError], message: str, field: str | None, schema_id: int | None
) -> DecodeError:
    return cls(message, field=field, schema_id=schema_id)


class OversizedError(DecodeError):
    """The input is larger than the configured maximum; it was not parsed."""

    reason = DeadLetterReason.OVERSIZED


class UndecodableError(DecodeError):
    """The bytes are not a well-formed message (framing, Avro binary, JSON)."""

    reason = DeadLetterReason.UNDECODABLE


class UnknownSchemaError(DecodeError):
    """The writer schema is not registered, or is not a schema this reader accepts."""

    reason = DeadLetterReason.UNKNOWN_SCHEMA


class ValidationFailedError(DecodeError):
    """The input decoded, but a value breaks the contract (type or value rule)."""

    reason = DeadLetterReason.VALIDATION_FAILED
