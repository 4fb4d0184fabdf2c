"""Audit checkpoints: the chain heads of a partition, summarised and signed (DESIGN §8).

The hash chain (:mod:`streams.core.lineage.hashchain`) shows an altered, removed or
re-linked revision, but deleting the *newest* revisions of a key leaves a shorter
chain that is just as valid. A checkpoint anchors the heads: every so often, per
partition, the pipeline lists the newest revision of every lineage key it holds
(:class:`~schemas.records.ChainHead`: key, revision, ``record_hash``), sorted by key,
summarises them in an RFC 6962 Merkle root (:mod:`streams.core.lineage.merkle`, with
its leaf/node domain separation) and signs the summary with HMAC-SHA256 under the
*checkpoint key*, a secret separate from the pseudonymisation key. Anyone may hold the
heads; only the key holder can make a checkpoint that verifies.

The signature covers the canonical encoding (:func:`signed_bytes`) of the format
version, partition, sequence, creation time, watermark, eviction bound, head count and
root. Each checkpoint names its key by ``key_id`` (the first 8 hex digits of the
key's SHA-256), so a verifier holding the current and previous keys
(:class:`CheckpointKeyring`) checks checkpoints made before a rotation too.

:class:`HeadAudit` compares the stored chains with the latest checkpoints and returns
findings: TRUNCATED (the stored newest revision is below the checkpoint's head),
MISSING (a head's key has no stored revision), REWRITTEN (the stored revision the
checkpoint names has another hash), EXTRA (a key the checkpoint should hold, because
it has a revision at or before the checkpoint's watermark and its study cannot have
been evicted, is not in it), and FORGED or ALTERED for a checkpoint whose signature
or root does not verify.

Pure: no clock, no I/O; the callers pass the time and read and write the rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from schemas.records import AuditCheckpoint, ChainHead
from streams.core.lineage.hashchain import LineageKey
from streams.core.lineage.merkle import merkle_root
from streams.core.lineage.state import StudyKey, StudyState

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "DEMO_CHECKPOINT_KEY",
    "MIN_CHECKPOINT_KEY_BYTES",
    "CheckpointFinding",
    "CheckpointFindingKind",
    "CheckpointKey",
    "CheckpointKeyring",
    "HeadAudit",
    "StoredRevision",
    "heads_of_study",
    "heads_root",
    "make_checkpoint",
    "signed_bytes",
    "verify_checkpoint",
]

CHECKPOINT_FORMAT_VERSION = 1
"""The version of :func:`signed_bytes` and of the leaf encoding; part of what is signed."""

DEMO_CHECKPOINT_KEY = b"imgov-DEMO-ONLY-checkpoint-key--PUBLIC--not-a-secret"
"""The checkpoint key of demo mode. It is in the source code: its signatures prove nothing."""

MIN_CHECKPOINT_KEY_BYTES = 32
"""Shortest accepted checkpoint key (HMAC-SHA256 keys shorter than the digest weaken it)."""

_DOMAIN = b"imgov.audit.checkpoint\x00"
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class CheckpointKey:
    """One checkpoint key and its public id. Neither repr nor str shows the key.

    Raises:
        ValueError: the key is shorter than :data:`MIN_CHECKPOINT_KEY_BYTES`.
    """

    __slots__ = ("_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_CHECKPOINT_KEY_BYTES:
            raise ValueError(f"a checkpoint key must be at least {MIN_CHECKPOINT_KEY_BYTES} bytes")
        self._key = key
        self.key_id = hashlib.sha256(key).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"CheckpointKey(key_id={self.key_id!r})"

    @property
    def is_demo(self) -> bool:
        """Whether this is the public demo key."""
        return hmac.compare_digest(self._key, DEMO_CHECKPOINT_KEY)

    def sign(self, message: bytes) -> str:
        """Returns the hex HMAC-SHA256 of ``message`` under this key."""
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class CheckpointKeyring:
    """The key that signs new checkpoints and the previous keys still accepted.

    Rotation: make a new key the current one and keep the old one among ``previous``
    until no latest checkpoint carries its id (one checkpoint interval per partition).
    """

    current: CheckpointKey
    previous: tuple[CheckpointKey, ...] = ()

    def by_id(self, key_id: str) -> CheckpointKey | None:
        """Returns the key with this id, or None when the ring has none."""
        for key in (self.current, *self.previous):
            if hmac.compare_digest(key.key_id, key_id):
                return key
        return None


# --- heads -------------------------------------------------------------------------------


def heads_of_study(key: StudyKey, state: StudyState) -> Iterator[ChainHead]:
    """Yields the chain head of every row of one study with a revision emitted.

    A tombstone (an evicted study) has no rows and so no heads.
    """
    site_id, study_uid = key
    for (algorithm_name, finding_code), row in state.rows.items():
        if row.emitted is not None:
            yield ChainHead(
                site_id,
                study_uid,
                algorithm_name,
                finding_code,
                row.emitted.revision,
                row.emitted.record_hash,
            )


def _leaf(head: ChainHead) -> bytes:
    # A JSON array: every string is quoted and escaped, so field boundaries are
    # unambiguous; ints are ints. The version is signed, so the encoding cannot drift.
    return _CANONICAL.encode(list(head)).encode()


def heads_root(heads: Iterable[ChainHead]) -> tuple[int, str]:
    """Returns ``(count, Merkle root)`` of the heads, sorted by lineage key first."""
    ordered = sorted(heads)
    return len(ordered), merkle_root(_leaf(head) for head in ordered)


# --- signing ----------------------------------------------------------------------------


def signed_bytes(checkpoint: AuditCheckpoint) -> bytes:
    """Returns the canonical bytes a checkpoint's signature covers (all but key and MAC).

    A domain prefix, then canonical JSON (sorted keys, no whitespace) of the format
    version, partition, sequence, times, head count and root.
    """
    fields = {
        "format_version": checkpoint.format_version,
        "partition": checkpoint.partition,
        "sequence": checkpoint.sequence,
        "created_at_ms": checkpoint.created_at_ms,
        "watermark_ms": checkpoint.watermark_ms,
        "evictable_before_ms": checkpoint.evictable_before_ms,
        "head_count": checkpoint.head_count,
        "merkle_root": checkpoint.merkle_root,
    }
    return _DOMAIN + _CANONICAL.encode(fields).encode()


def make_checkpoint(
    heads: Iterable[ChainHead],
    *,
    partition: int,
    sequence: int,
    created_at_ms: int,
    watermark_ms: int | None,
    evictable_before_ms: int | None,
    key: CheckpointKey,
) -> AuditCheckpoint:
    """Returns the signed checkpoint of a partition's heads.

    Args:
        heads: the newest revision of every lineage key the partition holds (any order).
        partition: the input partition (0 for an offline replay).
        sequence: one more than the partition's previous checkpoint.
        created_at_ms: when it is made (the caller's clock).
        watermark_ms: the event-time watermark the join's retention has reached.
        evictable_before_ms: studies whose last event is at or before this may have
            been evicted, so their keys may be absent (watermark minus retention).
        key: the current checkpoint key.
    """
    count, root = heads_root(heads)
    unsigned = AuditCheckpoint(
        format_version=CHECKPOINT_FORMAT_VERSION,
        partition=partition,
        sequence=sequence,
        created_at_ms=created_at_ms,
        watermark_ms=watermark_ms,
        evictable_before_ms=evictable_before_ms,
        head_count=count,
        merkle_root=root,
        key_id=key.key_id,
        signature="",
    )
    return unsigned.model_copy(update={"signature": key.sign(signed_bytes(unsigned))})


# --- verification -----------------------------------------------------------------------


class CheckpointFindingKind(StrEnum):
    """What :func:`verify_checkpoint` and :class:`HeadAudit` report."""

    FORGED = "FORGED"
    """The signature does not verify, or no key of the ring has the checkpoint's id."""
    ALTERED = "ALTERED"
    """The stored heads do not give the signed root or count."""
    TRUNCATED = "TRUNCATED"
    """The key's newest stored revision is below the checkpoint's head."""
    MISSING = "MISSING"
    """A key the checkpoint holds has no stored revision at all."""
    REWRITTEN = "REWRITTEN"
    """The stored revision at the checkpoint's head has another ``record_hash``."""
    EXTRA = "EXTRA"
    """A stored key the checkpoint should hold (by its times) is not in it."""
    NO_CHECKPOINT = "NO_CHECKPOINT"
    """Lineage is stored but no checkpoint: truncation cannot be checked."""


@dataclass(frozen=True, slots=True)
class CheckpointFinding:
    """One finding; ``key`` is the lineage key (pseudonymous references only) or None
    when the finding is about the checkpoint itself."""

    kind: CheckpointFindingKind
    partition: int | None
    sequence: int | None
    key: LineageKey | None
    expected_revision: int | None
    found_revision: int | None
    detail: str


def verify_checkpoint(
    checkpoint: AuditCheckpoint, heads: Sequence[ChainHead], keyring: CheckpointKeyring
) -> list[CheckpointFinding]:
    """Checks a checkpoint's signature (constant-time) and that ``heads`` give its root.

    Returns:
        No finding when both hold; FORGED and/or ALTERED otherwise.
    """
    findings: list[CheckpointFinding] = []

    def finding(kind: CheckpointFindingKind, detail: str) -> None:
        findings.append(
            CheckpointFinding(
                kind, checkpoint.partition, checkpoint.sequence, None, None, None, detail
            )
        )

    key = keyring.by_id(checkpoint.key_id)
    if key is None:
        finding(
            CheckpointFindingKind.FORGED,
            f"signed with key id {checkpoint.key_id!r}, which is not a configured checkpoint key",
        )
    elif not hmac.compare_digest(key.sign(signed_bytes(checkpoint)), checkpoint.signature):
        finding(CheckpointFindingKind.FORGED, "the signature does not match the checkpoint")
    if checkpoint.format_version != CHECKPOINT_FORMAT_VERSION:
        finding(
            CheckpointFindingKind.ALTERED,
            f"format version {checkpoint.format_version} is not {CHECKPOINT_FORMAT_VERSION}",
        )
        return findings
    count, root = heads_root(heads)
    if count != checkpoint.head_count or not hmac.compare_digest(root, checkpoint.merkle_root):
        finding(
            CheckpointFindingKind.ALTERED,
            f"the stored heads ({count}) do not give the signed Merkle root "
            f"({checkpoint.head_count} heads)",
        )
    return findings


@dataclass(frozen=True, slots=True)
class StoredRevision:
    """One stored revision of a key, as much of it as the comparison needs."""

    revision: int
    record_hash: str
    updated_at_ms: int


class HeadAudit:
    """Compares stored chains with the latest checkpoint of every partition.

    Feed it every stored key once (:meth:`check_key`, in any order and in groups, so
    the caller's memory stays bounded), then call :meth:`finish` for the keys the
    checkpoints hold that never came.

    Which checkpoint should hold a stored key is not known (the store does not record
    a key's partition; with pseudonymised study UIDs it cannot be recomputed). A key
    in no checkpoint is EXTRA only when *every* checkpoint should have held it: it has
    a revision at or before the checkpoint's watermark (it existed then) and a revision
    after ``evictable_before_ms`` (its study was not evicted). Keys whose revisions all
    came after the watermark, and revisions above the checkpoint's head, are changes
    made since and are fine.

    Args:
        checkpoints: the latest checkpoint of each partition with its stored heads; only
            those that verified should be given (a forged one vouches for nothing).
    """

    def __init__(self, checkpoints: Sequence[tuple[AuditCheckpoint, Sequence[ChainHead]]]) -> None:
        self._checkpoints = [checkpoint for checkpoint, _ in checkpoints]
        self._heads: dict[LineageKey, tuple[AuditCheckpoint, ChainHead]] = {}
        for checkpoint, heads in sorted(checkpoints, key=lambda c: c[0].created_at_ms):
            for head in heads:
                self._heads[
                    (head.site_id, head.study_uid, head.algorithm_name, head.finding_code)
                ] = (
                    checkpoint,
                    head,
                )
        self._seen: set[LineageKey] = set()

    @property
    def heads(self) -> int:
        """The number of distinct keys the checkpoints hold."""
        return len(self._heads)

    def check_key(
        self, key: LineageKey, revisions: Iterable[StoredRevision]
    ) -> list[CheckpointFinding]:
        """Returns the findings about one stored key (all of its stored revisions)."""
        stored = list(revisions)
        if not stored:
            return []
        self._seen.add(key)
        held = self._heads.get(key)
        if held is None:
            return self._extra(key, stored)
        checkpoint, head = held
        newest = max(r.revision for r in stored)

        def finding(kind: CheckpointFindingKind, detail: str) -> list[CheckpointFinding]:
            return [
                CheckpointFinding(
                    kind,
                    checkpoint.partition,
                    checkpoint.sequence,
                    key,
                    head.revision,
                    newest,
                    detail,
                )
            ]

        if newest < head.revision:
            return finding(
                CheckpointFindingKind.TRUNCATED,
                f"checkpoint {checkpoint.sequence} of partition {checkpoint.partition} names "
                f"revision {head.revision}, the newest stored is {newest}",
            )
        hashes = {r.record_hash for r in stored if r.revision == head.revision}
        if head.record_hash not in hashes:
            return finding(
                CheckpointFindingKind.REWRITTEN,
                f"stored revision {head.revision} is not the one checkpoint "
                f"{checkpoint.sequence} of partition {checkpoint.partition} signed",
            )
        return []

    def _extra(self, key: LineageKey, stored: list[StoredRevision]) -> list[CheckpointFinding]:
        if not self._checkpoints:
            return []
        first = min(r.updated_at_ms for r in stored)
        last = max(r.updated_at_ms for r in stored)
        for checkpoint in self._checkpoints:
            if checkpoint.watermark_ms is None or first > checkpoint.watermark_ms:
                return []  # the key may have come after this checkpoint
            if (
                checkpoint.evictable_before_ms is not None
                and last <= checkpoint.evictable_before_ms
            ):
                return []  # its study may have been evicted before this checkpoint
        newest = max(r.revision for r in stored)
        return [
            CheckpointFinding(
                CheckpointFindingKind.EXTRA,
                None,
                None,
                key,
                None,
                newest,
                f"stored up to revision {newest}, from before every checkpoint's watermark and "
                "not evictable, but no checkpoint holds the key",
            )
        ]

    def finish(self) -> list[CheckpointFinding]:
        """Returns a MISSING finding for every checkpoint head whose key never came."""
        findings = []
        for key, (checkpoint, head) in sorted(self._heads.items()):
            if key not in self._seen:
                findings.append(
                    CheckpointFinding(
                        CheckpointFindingKind.MISSING,
                        checkpoint.partition,
                        checkpoint.sequence,
                        key,
                        head.revision,
                        None,
                        f"checkpoint {checkpoint.sequence} of partition {checkpoint.partition} "
                        f"names revision {head.revision}, no revision is stored",
                    )
                )
        return findings

    def narrow(self, site_id: str | None = None, study_uid: str | None = None) -> None:
        """Keeps only the heads of one site and/or study (a verification of part)."""
        self._heads = {
            key: held
            for key, held in self._heads.items()
            if (site_id is None or key[0] == site_id) and (study_uid is None or key[1] == study_uid)
        }
