"""Writing a run to files: events (JSON Lines or Avro container) and ground truth.

Events go through ``schemas.files``, which owns the formats the replay driver reads
(JSON Lines: one event per line, ``"event_type"`` first, then the Avro fields).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path

from schemas import files
from schemas.events import Event
from streams.simulate.truth import StudyTruth

__all__ = ["OUTPUT_SUFFIXES", "NativeFormat", "OutputFormatError", "write_events", "write_truth"]


class NativeFormat(StrEnum):
    """What ``--emit`` chooses: the format of one kind of event."""

    HL7 = "hl7"
    """Reports as HL7 v2 ORU^R01."""
    FHIR = "fhir"
    """Alerts as FHIR R4 Communication."""
    DICOM_SR = "dicom-sr"
    """Inferences as DICOM SR (TID 1500) Part 10 files."""


OUTPUT_SUFFIXES = (".jsonl", ".avro")

_CHUNK = 10_000


class OutputFormatError(ValueError):
    """The output file's extension names no format the simulator writes."""


def write_events(path: Path, events: Iterable[Event]) -> int:
    """Writes ``events`` in order to ``path`` (``.jsonl`` or ``.avro``); returns the count.

    Raises:
        OutputFormatError: the extension is neither (checked before anything is written).
        OSError: the file cannot be written.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return files.write_jsonl(path, events)
    if suffix == ".avro":
        return files.write_avro(path, events)
    raise OutputFormatError(f"{path}: unknown output format {suffix!r}; use .jsonl or .avro")


def write_truth(path: Path, truths: Iterable[StudyTruth]) -> None:
    """Writes one JSON line per study."""
    chunk: list[str] = []
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for truth in truths:
            chunk.append(truth.to_json_line())
            if len(chunk) >= _CHUNK:
                out.writelines(chunk)
                chunk.clear()
        out.writelines(chunk)
