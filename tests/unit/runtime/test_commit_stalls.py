"""The stall guard re-reads input partitions whose messages were fetched and dropped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from streams.runtime.app import CommitStallGuard


class _Consumer:
    """The parts of Faust's consumer that ``CommitStallGuard.check_idle`` touches."""

    def __init__(self, assigned: set[TP], paused: set[TP]) -> None:
        self._assigned = assigned
        self._paused_partitions = paused
        self.sought: list[tuple[TP, int]] = []

    def assignment(self) -> set[TP]:
        return self._assigned

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))


def test_an_idle_partition_behind_its_end_twice_at_the_same_offset_is_read_again() -> None:
    mine, paused = TP("in", 0), TP("in", 1)
    consumer = _Consumer({mine, paused}, {paused})
    guard = CommitStallGuard(SimpleNamespace(consumer=consumer), ("in",))  # type: ignore[arg-type]

    def check(lagging: dict[tuple[str, int], int]) -> list[tuple[TP, int]]:
        consumer.sought.clear()
        asyncio.run(guard.check_idle(lagging))
        return list(consumer.sought)

    lagging = {("in", 0): 60, ("in", 1): 10, ("in", 2): 5}
    assert check(lagging) == []  # once may be a commit on its way
    # Twice at the same offset: only the partition this worker owns and fetches; a
    # paused one is held back on purpose, another worker's is not ours to seek.
    assert check(lagging) == [(mine, 60)]
    # Just sought: the re-read gets two more checks before it is sought again.
    assert check(lagging) == []
    assert check(lagging) == [(mine, 60)]
    assert check({("in", 0): 72}) == []  # it moved: wait again
    assert check({}) == []
    assert check({("in", 0): 72}) == []


def test_a_partition_acknowledged_beyond_its_commit_twice_is_read_again_then_given_time() -> None:
    stuck, moving = TP("in", 0), TP("in", 1)
    consumer = _Consumer({stuck, moving}, set())
    consumer._acked = {stuck: [41, 42], moving: [90]}  # type: ignore[attr-defined]
    committed = {stuck: 30, moving: 3}
    consumer._committed_offset = committed  # type: ignore[attr-defined]
    guard = CommitStallGuard(SimpleNamespace(consumer=consumer), ("in",))  # type: ignore[arg-type]

    def check() -> list[tuple[TP, int]]:
        consumer.sought.clear()
        asyncio.run(guard.check())
        committed[moving] += 1  # commits that move, however far behind, are no stall
        return list(consumer.sought)

    assert check() == []  # acknowledgements ahead of the commit: may be one on its way
    assert check() == [(stuck, 30)]  # the same offset twice: a message never delivered
    # The re-read is committed only after the next checkpoint: two more checks first.
    assert check() == []
    assert check() == [(stuck, 30)]
    consumer._acked = {stuck: [], moving: []}  # type: ignore[attr-defined]
    assert check() == []
