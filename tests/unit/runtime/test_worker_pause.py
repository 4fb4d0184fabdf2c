"""Pausing input partitions leaves a fetch in flight its own set of active partitions."""

from __future__ import annotations

from faust.types import TP

from streams.runtime.app import set_paused


class _Consumer:
    """The parts of Faust's consumer that ``set_paused`` touches."""

    def __init__(self, assigned: set[TP]) -> None:
        self._assigned = assigned
        self._active_partitions = set(assigned)
        self._paused_partitions: set[TP] = set()

    def _get_active_partitions(self) -> set[TP]:
        return self._active_partitions

    def assignment(self) -> set[TP]:
        return self._assigned


def test_pause_and_resume_replace_the_active_set_instead_of_mutating_it() -> None:
    a, b, c = TP("in", 0), TP("in", 1), TP("in", 2)
    consumer = _Consumer({a, b, c})
    in_flight = consumer._get_active_partitions()  # what a running fetch filters with
    set_paused(consumer, {b}, paused=True)
    # Records of b already fetched are still delivered: the old set is untouched.
    assert in_flight == {a, b, c}
    assert consumer._get_active_partitions() == {a, c}
    assert consumer._paused_partitions == {b}
    set_paused(consumer, {b, TP("gone", 9)}, paused=False)
    assert consumer._get_active_partitions() == {a, b, c}  # never an unassigned one
    assert consumer._paused_partitions == set()
