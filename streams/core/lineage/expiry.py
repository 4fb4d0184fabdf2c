"""The joiner's index of when each study falls due for eviction.

Scanning every open study on each watermark advance costs O(open studies): with 30
days of retention that is hundreds of thousands of states per advance. The index keeps
one entry per stored study (live or tombstone) in coarse time buckets, so an advance
touches only the buckets the watermark has passed plus the one it is in.

It is derived data: the joiner rebuilds it from the store (``StudyStore.items``) when it
starts or when the runtime's partition assignment changes, and treats every entry as a
hint, re-reading the state before acting on it.
"""

from __future__ import annotations

import heapq

from streams.core.lineage.state import StudyKey

__all__ = ["ExpiryIndex"]


class ExpiryIndex:
    """Study keys by the watermark at which they fall due.

    Args:
        bucket_ms: width of a bucket; keys in the bucket holding the watermark are
            checked one by one, so a narrow bucket keeps that check short.
    """

    def __init__(self, bucket_ms: int = 60_000) -> None:
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        self._bucket_ms = bucket_ms
        self._due: dict[StudyKey, int] = {}
        self._buckets: dict[int, set[StudyKey]] = {}
        self._heap: list[int] = []  # bucket numbers; may hold stale or repeated ones

    def __len__(self) -> int:
        return len(self._due)

    def clear(self) -> None:
        """Forgets every entry."""
        self._due.clear()
        self._buckets.clear()
        self._heap.clear()

    def schedule(self, key: StudyKey, due_ms: int) -> None:
        """Records (or moves) the time at which a study falls due."""
        previous = self._due.get(key)
        if previous == due_ms:
            return
        if previous is not None:
            self._remove(key, previous)
        self._due[key] = due_ms
        bucket = due_ms // self._bucket_ms
        members = self._buckets.get(bucket)
        if members is None:
            members = self._buckets[bucket] = set()
            heapq.heappush(self._heap, bucket)
        members.add(key)

    def discard(self, key: StudyKey) -> None:
        """Removes a study's entry, if any."""
        previous = self._due.pop(key, None)
        if previous is not None:
            self._discard_from_bucket(key, previous)

    def pop_due(self, watermark_ms: int) -> list[tuple[int, StudyKey]]:
        """Removes and returns the entries due at ``watermark_ms`` (due <= watermark).

        Returns:
            (due_ms, key) pairs, sorted so the caller's outputs come in a
            reproducible order.
        """
        current = watermark_ms // self._bucket_ms
        due: list[tuple[int, StudyKey]] = []
        while self._heap and self._heap[0] <= current:
            bucket = self._heap[0]
            members = self._buckets.get(bucket)
            if members is None:  # emptied earlier; its heap entry is stale
                heapq.heappop(self._heap)
                continue
            ready = [k for k in members if self._due[k] <= watermark_ms]
            for key in ready:
                due.append((self._due.pop(key), key))
                members.discard(key)
            if members:
                break  # the watermark's own bucket, partly due: keep it
            del self._buckets[bucket]
            heapq.heappop(self._heap)
        due.sort()
        return due

    def _remove(self, key: StudyKey, due_ms: int) -> None:
        del self._due[key]
        self._discard_from_bucket(key, due_ms)

    def _discard_from_bucket(self, key: StudyKey, due_ms: int) -> None:
        bucket = due_ms // self._bucket_ms
        members = self._buckets.get(bucket)
        if members is not None:
            members.discard(key)
            if not members:
                # The heap entry stays until pop_due meets it; a bucket re-created in
                # the meantime pushes a second entry, which is harmless.
                del self._buckets[bucket]
