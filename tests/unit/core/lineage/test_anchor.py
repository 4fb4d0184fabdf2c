"""Audit checkpoints: the RFC 6962 Merkle root, the signature, and the head comparison
that names truncated, missing, rewritten and extra chain heads."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import AuditCheckpoint, ChainHead
from streams.core.lineage.anchor import (
    DEMO_CHECKPOINT_KEY,
    CheckpointFindingKind,
    CheckpointKey,
    CheckpointKeyring,
    HeadAudit,
    StoredRevision,
    heads_root,
    make_checkpoint,
    signed_bytes,
    verify_checkpoint,
)
from streams.core.lineage.merkle import EMPTY_ROOT, leaf_hash, merkle_root, node_hash

KEY = CheckpointKey(b"k" * 32)
OLD_KEY = CheckpointKey(b"o" * 32)
RING = CheckpointKeyring(KEY)
DAY = 86_400_000


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, as written: split at the largest power of two below n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])
    ).digest()


@given(st.lists(st.binary(max_size=12), max_size=40))
def test_the_root_is_rfc_6962s(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == reference_root(leaves).hex()


def test_known_roots_and_domain_separation() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").hexdigest()
    assert merkle_root([b"a"]) == hashlib.sha256(b"\x00a").hexdigest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert merkle_root([b"a", b"b"]) == node_hash(a, b).hex()
    # The two children of a node, offered as one leaf, do not give the node's hash:
    # without the 0x00/0x01 prefixes they would (a second preimage of the tree).
    assert merkle_root([a + b]) != merkle_root([b"a", b"b"])
    assert merkle_root([b"b", b"a"]) != merkle_root([b"a", b"b"])


heads_strategy = st.lists(
    st.builds(
        ChainHead,
        st.sampled_from(["site-01", "site-02"]),
        st.text("0123456789.", min_size=1, max_size=8),
        st.sampled_from(["ich-detect", "pe-detect"]),
        st.sampled_from(["ICH", "PE"]),
        st.integers(1, 9),
        st.text("0123456789abcdef", min_size=64, max_size=64),
    ),
    max_size=30,
    unique_by=lambda h: h[:4],
)


def checkpoint(
    heads: list[ChainHead], key: CheckpointKey = KEY, **kw: int | None
) -> AuditCheckpoint:
    options: dict[str, int | None] = {
        "partition": 3,
        "sequence": 7,
        "created_at_ms": 100 * DAY,
        "watermark_ms": 90 * DAY,
        "evictable_before_ms": 60 * DAY,
    }
    options.update(kw)
    return make_checkpoint(heads, key=key, **options)  # type: ignore[arg-type]


@given(heads_strategy, st.randoms())
def test_a_checkpoint_verifies_whatever_the_order_of_its_heads(
    heads: list[ChainHead], rng: object
) -> None:
    made = checkpoint(heads)
    shuffled = list(heads)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert verify_checkpoint(made, shuffled, RING) == []
    assert made.head_count == len(heads) and made.key_id == KEY.key_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("partition", 4),
        ("sequence", 8),
        ("created_at_ms", 1),
        ("watermark_ms", 91 * DAY),
        ("evictable_before_ms", None),
        ("head_count", 0),
        ("merkle_root", EMPTY_ROOT),
    ],
)
def test_any_signed_field_changed_is_a_forgery(field: str, value: object) -> None:
    heads = [ChainHead("s", "u", "a", "F", 2, "ab" * 32)]
    forged = checkpoint(heads).model_copy(update={field: value})
    kinds = {f.kind for f in verify_checkpoint(forged, heads, RING)}
    assert CheckpointFindingKind.FORGED in kinds


def test_heads_that_do_not_give_the_root_are_altered() -> None:
    heads = [
        ChainHead("s", "u", "a", "F", 2, "ab" * 32),
        ChainHead("s", "v", "a", "F", 1, "cd" * 32),
    ]
    made = checkpoint(heads)
    findings = verify_checkpoint(made, heads[:1], RING)
    assert [f.kind for f in findings] == [CheckpointFindingKind.ALTERED]
    lowered = [heads[0]._replace(revision=1), heads[1]]
    assert [f.kind for f in verify_checkpoint(made, lowered, RING)] == [
        CheckpointFindingKind.ALTERED
    ]


def test_rotation_previous_keys_verify_unknown_ones_do_not() -> None:
    heads = [ChainHead("s", "u", "a", "F", 1, "ab" * 32)]
    old = checkpoint(heads, key=OLD_KEY)
    assert [f.kind for f in verify_checkpoint(old, heads, RING)] == [CheckpointFindingKind.FORGED]
    rotated = CheckpointKeyring(KEY, (OLD_KEY,))
    assert verify_checkpoint(old, heads, rotated) == []
    # A signature made with the right id but another key is refused too.
    impostor = old.model_copy(update={"signature": KEY.sign(signed_bytes(old))})
    assert verify_checkpoint(impostor, heads, rotated)[0].kind is CheckpointFindingKind.FORGED


def test_keys_are_long_have_public_ids_and_never_show() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        CheckpointKey(b"short")
    assert KEY.key_id == hashlib.sha256(b"k" * 32).hexdigest()[:8]
    assert "kkkk" not in repr(KEY) and KEY.key_id in repr(KEY)
    assert CheckpointKey(DEMO_CHECKPOINT_KEY).is_demo and not KEY.is_demo


def stored(
    revisions: int, first_ms: int, step_ms: int = 1000, hash_of: str = "h"
) -> list[StoredRevision]:
    return [
        StoredRevision(r, f"{hash_of}{r}", first_ms + r * step_ms) for r in range(1, revisions + 1)
    ]


def audit_of(heads: list[ChainHead]) -> HeadAudit:
    return HeadAudit([(checkpoint(heads), heads)])


KEY_A = ("site-01", "1.2.3", "ich-detect", "ICH")
KEY_B = ("site-01", "1.2.4", "ich-detect", "ICH")


@given(st.integers(2, 8), st.integers(1, 7), st.integers(0, 3))
def test_a_truncated_head_is_named_with_the_revision_expected_and_found(
    head: int, cut: int, later: int
) -> None:
    """Deleting revisions above ``kept`` of a key is TRUNCATED iff a signed head is lost."""
    kept = min(cut, head - 1)
    audit = audit_of([ChainHead(*KEY_A, head, f"h{head}")])
    findings = audit.check_key(KEY_A, stored(kept, 80 * DAY))
    assert [(f.kind, f.key, f.expected_revision, f.found_revision) for f in findings] == [
        (CheckpointFindingKind.TRUNCATED, KEY_A, head, kept)
    ]
    # Revisions made after the checkpoint are fine.
    audit = audit_of([ChainHead(*KEY_A, head, f"h{head}")])
    assert audit.check_key(KEY_A, stored(head + later, 80 * DAY)) == []
    assert audit.finish() == []


def test_a_key_without_rows_is_missing_and_a_rewritten_head_is_named() -> None:
    audit = audit_of([ChainHead(*KEY_A, 3, "h3"), ChainHead(*KEY_B, 1, "h1")])
    findings = audit.check_key(KEY_B, stored(1, 80 * DAY, hash_of="forged"))
    assert [(f.kind, f.key) for f in findings] == [(CheckpointFindingKind.REWRITTEN, KEY_B)]
    missing = audit.finish()
    assert [(f.kind, f.key, f.expected_revision, f.found_revision) for f in missing] == [
        (CheckpointFindingKind.MISSING, KEY_A, 3, None)
    ]


@pytest.mark.parametrize(
    ("first_ms", "revisions", "extra"),
    [
        (80 * DAY, 2, True),  # existed at the watermark (90 d), not evictable (after 60 d)
        (91 * DAY, 2, False),  # every revision after the watermark: came after the checkpoint
        (40 * DAY, 2, False),  # last revision before 60 d: its study may have been evicted
        (59 * DAY, 40, True),  # first before the eviction bound, last after it: was held
    ],
)
def test_an_extra_key_is_one_the_checkpoint_should_have_held(
    first_ms: int, revisions: int, extra: bool
) -> None:
    audit = audit_of([ChainHead(*KEY_A, 1, "h1")])
    findings = audit.check_key(KEY_B, stored(revisions, first_ms, step_ms=DAY // 10))
    assert [(f.kind, f.key) for f in findings] == (
        [(CheckpointFindingKind.EXTRA, KEY_B)] if extra else []
    )


def test_without_a_watermark_or_a_checkpoint_nothing_is_extra() -> None:
    heads = [ChainHead(*KEY_A, 1, "h1")]
    no_watermark = HeadAudit([(checkpoint(heads, watermark_ms=None), heads)])
    assert no_watermark.check_key(KEY_B, stored(1, 0)) == []
    assert HeadAudit([]).check_key(KEY_B, stored(1, 0)) == []


def test_the_order_of_heads_does_not_change_the_root() -> None:
    a, b = ChainHead(*KEY_A, 1, "h1"), ChainHead(*KEY_B, 2, "h2")
    assert heads_root([a, b]) == heads_root([b, a])
    assert heads_root([a, b]) != heads_root([a, b._replace(record_hash="h3")])


@settings(max_examples=50)
@given(heads_strategy, st.data())
def test_deleting_stored_newest_revisions_is_always_found(
    heads: list[ChainHead], data: st.DataObject
) -> None:
    """Property: the full stored history verifies clean; cut any key's head and exactly
    that key is reported, TRUNCATED or (all gone) MISSING."""
    histories = {
        h[:4]: [
            StoredRevision(r, h.record_hash if r == h.revision else f"x{r}", 80 * DAY)
            for r in range(1, h.revision + 1)
        ]
        for h in heads
    }
    clean = audit_of(heads)
    assert [f for k, revs in histories.items() for f in clean.check_key(k, revs)] == []
    assert clean.finish() == []
    if not heads:
        return
    victim = data.draw(st.sampled_from(sorted(histories)))
    keep = data.draw(st.integers(0, len(histories[victim]) - 1))
    histories[victim] = histories[victim][:keep]
    audit = audit_of(heads)
    findings = [f for k, revs in histories.items() for f in audit.check_key(k, revs)]
    findings += audit.finish()
    expected = CheckpointFindingKind.TRUNCATED if keep else CheckpointFindingKind.MISSING
    assert [(f.kind, f.key) for f in findings] == [(expected, victim)]
