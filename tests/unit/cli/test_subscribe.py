"""The reference subscriber's memory of message identities."""

from __future__ import annotations

from streams.cli.subscribe import SeenIds


def test_repeats_are_caught_and_memory_is_bounded() -> None:
    seen = SeenIds(capacity=3)
    assert [seen.first_time(i) for i in (b"a", b"b", b"a", b"c")] == [True, True, False, True]
    assert seen.first_time(b"d")  # over capacity: b"b", the least recent, is forgotten
    assert not seen.first_time(b"a")  # seen again recently: kept
    assert seen.first_time(b"b")
