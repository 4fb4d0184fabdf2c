"""Value rules for input events, beyond what Avro types and the models check.

The rules (DESIGN §3, §7), all of which reject with ``ValidationFailedError``:

* **Identifiers present.** ``event_id``, ``site_id`` and ``study_uid`` are non-blank on every
  event: the lineage join is keyed by (``site_id``, ``study_uid``), so an event without a
  study references nothing the pipeline can attach it to, whatever else it carries (an
  accession number alone cannot be joined). Also non-blank: ``modality``,
  ``algorithm_name``, ``algorithm_version``, ``finding_code`` of an inference;
  ``alert_id``, ``algorithm_name``, ``algorithm_version``, ``finding_code`` of an alert
  (they name the lineage row it belongs to); ``report_id`` of a report and the
  ``finding_code`` of each of its findings.
* **Optional references are absent or real.** A blank optional reference
  (``accession_number``, ``patient_id``, ``inference_event_id``, ``recipient_id``,
  ``interpreter_id``, ``parent_report_id``) is how many feeds spell "absent" (an empty HL7
  field); it is normalised to ``None`` rather than rejected, so a blank patient id never
  becomes a pseudonym shared by every patient without one.
* **Probabilities.** ``score`` and ``threshold``, when present, lie in [0, 1] (NaN fails).
* **Timestamps.** Every ``*_ms`` field, when present, is at or after 2000-01-01T00:00:00Z
  and at most ``max_clock_skew_ms`` ahead of the injected clock. The default skew is
  15 minutes: wide enough for unsynchronised modality and RIS hosts, narrower than the
  smallest real time-zone offset (30 min), so local time mislabelled as UTC east of
  Greenwich is caught.

Messages name the model, the field and, except for direct identifiers (DESIGN §8), the
offending value, plus a hint when the value looks like seconds or microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.errors import ValidationFailedError
from schemas.events import AlertEvent, Event, InferenceEvent, ReportEvent
from schemas.units import MINUTE_MS, format_duration, utc

__all__ = [
    "DEFAULT_MAX_CLOCK_SKEW_MS",
    "IDENTIFIER_FIELDS",
    "MIN_TIMESTAMP_MS",
    "Clock",
    "EventValidator",
    "validation_failed_from_pydantic",
]

Clock = Callable[[], int]
"""Returns the current time in epoch milliseconds; injected, never read here."""

MIN_TIMESTAMP_MS = 946_684_800_000
"""2000-01-01T00:00:00Z: no imaging AI event predates it; smaller values are bugs."""

DEFAULT_MAX_CLOCK_SKEW_MS = 15 * MINUTE_MS
"""How far ahead of the clock a timestamp may be (see the module docstring)."""

IDENTIFIER_FIELDS = frozenset({"patient_id", "accession_number", "recipient_id", "interpreter_id"})
"""Direct identifiers: their values never appear in a message or a log (DESIGN §8)."""

_MAX_REPORTED_ERRORS = 5


@dataclass(frozen=True, slots=True)
class _Rules:
    required: tuple[str, ...]
    optional_refs: tuple[str, ...]
    unit_interval: tuple[str, ...]
    timestamps: tuple[str, ...]


def _rules_for(model: type[BaseModel], required: tuple[str, ...], refs: tuple[str, ...]) -> _Rules:
    fields = tuple(model.model_fields)
    for name in required + refs:
        assert name in fields, f"{model.__name__} has no field {name}"
    return _Rules(
        required=("event_id", "site_id", "study_uid", *required),
        optional_refs=refs,
        unit_interval=tuple(f for f in ("score", "threshold") if f in fields),
        timestamps=tuple(f for f in fields if f.endswith("_ms")),
    )


_RULES: dict[type[BaseModel], _Rules] = {
    InferenceEvent: _rules_for(
        InferenceEvent,
        ("modality", "algorithm_name", "algorithm_version", "finding_code"),
        ("accession_number", "patient_id"),
    ),
    AlertEvent: _rules_for(
        AlertEvent,
        ("alert_id", "algorithm_name", "algorithm_version", "finding_code"),
        ("inference_event_id", "recipient_id"),
    ),
    ReportEvent: _rules_for(
        ReportEvent,
        ("report_id",),
        ("accession_number", "patient_id", "interpreter_id", "parent_report_id"),
    ),
}


class EventValidator:
    """Applies the value rules to decoded events.

    Called by the codec and the file readers after a model has been built, once per event.
    Pure: the clock is injected and only called when ``validate`` is given no ``now_ms``.

    Args:
        clock: Returns the current time in epoch milliseconds.
        max_clock_skew_ms: How far ahead of ``clock()`` a timestamp may be.
        min_timestamp_ms: The earliest accepted timestamp.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
        min_timestamp_ms: int = MIN_TIMESTAMP_MS,
    ) -> None:
        if max_clock_skew_ms < 0:
            raise ValueError("max_clock_skew_ms must be >= 0")
        self._clock = clock
        self._max_skew_ms = max_clock_skew_ms
        self._min_ms = min_timestamp_ms

    def validate(self, event: Event, now_ms: int | None = None) -> Event:
        """Checks ``event`` against the rules.

        Args:
            event: A decoded, type-checked event.
            now_ms: The current time; ``clock()`` is called when it is ``None``.

        Returns:
            The event itself, or a copy whose blank optional references are ``None``.

        Raises:
            ValidationFailedError: Naming every broken rule; ``field`` is the first one.
        """
        rules = _RULES[type(event)]
        values = event.__dict__  # pydantic keeps field values here; skips descriptor lookups
        problems: list[tuple[str, str]] = []
        name = type(event).__name__
        for field in rules.required:
            value = values[field]
            if not value or value.isspace():
                problems.append((field, f"{name}.{field} is empty"))
        for field in rules.unit_interval:
            number = values[field]
            if number is not None and not 0.0 <= number <= 1.0:
                problems.append((field, f"{name}.{field} = {number!r} is outside [0, 1]"))
        lower_ms = self._min_ms
        upper_ms = (self._clock() if now_ms is None else now_ms) + self._max_skew_ms
        for field in rules.timestamps:
            ms = values[field]
            if ms is not None and not lower_ms <= ms <= upper_ms:
                problems.append((field, self._timestamp_problem(name, field, ms, upper_ms)))
        if isinstance(event, ReportEvent):
            for index, finding in enumerate(event.findings):
                code = finding.finding_code
                if not code or code.isspace():
                    field = f"findings[{index}].finding_code"
                    problems.append((field, f"{name}.{field} is empty"))
        if problems:
            raise ValidationFailedError(
                "; ".join(text for _, text in problems), field=problems[0][0]
            )
        for field in rules.optional_refs:
            ref = values[field]
            if ref is not None and (not ref or ref.isspace()):
                blanks = {f: None for f in rules.optional_refs if _is_blank(values[f])}
                return event.model_copy(update=blanks)
        return event

    def _timestamp_problem(self, model: str, field: str, ms: int, upper_ms: int) -> str:
        shown = f"{model}.{field} = {ms} ({_iso(ms)})"
        if ms < self._min_ms:
            hint = " (looks like epoch seconds, not milliseconds)" if ms > 946_684_800 else ""
            return f"{shown} is before {_iso(self._min_ms)}{hint}"
        ahead = format_duration(ms - upper_ms + self._max_skew_ms)
        hint = " (looks like epoch microseconds, not milliseconds)" if ms > 10**14 else ""
        return (
            f"{shown} is {ahead} ahead of the clock, more than the allowed skew of "
            f"{format_duration(self._max_skew_ms)}: check the producer's clock and time zone{hint}"
        )


def _is_blank(value: str | None) -> bool:
    return value is not None and (not value or value.isspace())


def _iso(ms: int) -> str:
    # To the millisecond, unlike units.format_utc: a bound missed by 1 ms must show it.
    try:
        moment = utc(ms)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def validation_failed_from_pydantic(
    model: type[BaseModel], exc: ValidationError, *, schema_id: int | None = None
) -> ValidationFailedError:
    """Translates a pydantic error into ``ValidationFailedError`` without leaking identifiers.

    The offending value is shown only for a declared field that is not a direct identifier,
    and never for a missing field (pydantic's "input" is then the whole record).

    Returns:
        The error to raise (``raise validation_failed_from_pydantic(...) from exc``).
    """
    errors = exc.errors(include_url=False, include_context=False)
    parts: list[str] = []
    for error in errors[:_MAX_REPORTED_ERRORS]:
        loc = error["loc"]
        text = f"{model.__name__}.{_dotted(loc) or '<record>'}: {error['msg']}"
        top = loc[0] if loc else None
        if (
            error["type"] != "missing"
            and isinstance(top, str)
            and top in model.model_fields
            and top not in IDENTIFIER_FIELDS
        ):
            text += f" (got {_short_repr(error.get('input'))})"
        parts.append(text)
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more")
    first = errors[0]["loc"] if errors else ()
    suffix = f" (schema id {schema_id})" if schema_id is not None else ""
    return ValidationFailedError(
        "; ".join(parts) + suffix, field=_dotted(first) or None, schema_id=schema_id
    )


def _dotted(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")


def _short_repr(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
