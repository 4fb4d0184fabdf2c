"""Two corrections to faust-streaming 0.15.3's offset commit, applied by ``build_app``.

Faust commits, per partition, the end of the first run of consecutive acknowledged
offsets. Two shortcuts in ``faust.transport.consumer.Consumer`` let it commit past
messages the worker never processed, which breaks at-least-once delivery (DESIGN §7);
the live rescaling test lost input events through them:

1. ``_add_gap``: when the fetcher sees offsets jump (normal for compacted or
   transactional topics), the missing offsets are treated as acknowledged. Our inputs
   are neither, and a jump after a rebalance means messages that were fetched by
   someone else or dropped: they must be processed, not skipped. -> a no-op here.
2. ``_new_offset``: the check that the first acknowledged offset follows the committed
   one is ``min(acked) - committed > 1`` and is skipped when ``committed`` is 0; it
   lets a single unacknowledged message (or any number at offset 0) be skipped. ->
   strict: nothing is committed until the offset right after the committed one is
   acknowledged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["apply_faust_commit_fixes"]

_APPLIED = False


def apply_faust_commit_fixes() -> None:
    """Patches ``faust.transport.consumer.Consumer`` once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from faust.transport import consumer as faust_consumer
    from faust.utils.functional import consecutive_numbers

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        return None

    def _new_offset(self: Any, tp: Any) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        acked.sort()
        committed = self._committed_offset[tp]
        if committed is not None and acked[0] != committed:
            if acked[0] < committed:  # acknowledged again after a commit: drop those
                stale = [o for o in acked if o < committed]
                acked[: len(stale)] = []
                self._acked_index[tp].difference_update(stale)
                return _new_offset(self, tp)
            return None
        batch = next(consecutive_numbers(acked))
        acked[: len(batch)] = []
        self._acked_index[tp].difference_update(batch)
        return int(batch[-1]) + 1

    faust_consumer.Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    faust_consumer.Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    _APPLIED = True
