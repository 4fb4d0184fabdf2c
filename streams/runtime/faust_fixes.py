"""Three corrections to faust-streaming 0.15.3's offset commit, applied by ``build_app``.

Faust commits, per partition, the end of the first run of consecutive acknowledged
offsets. Shortcuts in ``faust.transport.consumer.Consumer`` let it commit past, or never
deliver, messages the worker never processed, which breaks at-least-once delivery
(DESIGN §7); the live rescaling test lost input events through them:

1. ``_add_gap``: when the fetcher sees offsets jump (normal for compacted or
   transactional topics), the missing offsets are treated as acknowledged. Our inputs
   are neither, and a jump after a rebalance means messages that were fetched by
   someone else or dropped: they must be processed, not skipped. -> a no-op here.
2. ``_new_offset``: the check that the first acknowledged offset follows the committed
   one is ``min(acked) - committed > 1`` and is skipped when ``committed`` is 0; it
   lets a single unacknowledged message (or any number at offset 0) be skipped. ->
   strict: nothing is committed until the offset right after the committed one is
   acknowledged.
3. ``_drain_messages`` drops every message below ``_read_offset[tp]``, the offset of
   the last message it handed to the streams, and ``perform_seek``/``seek`` set that
   read offset to the position they seek to. But the fetch runs in the consumer thread
   and the delivery is awaited message by message, so records fetched *before* a seek
   are still being delivered after it (after recovery or a rebalance,
   ``Recovery.on_recovery_completed`` resumes the stream partitions and then seeks them
   to the committed offset while the fetcher runs), and each one raises the read offset
   again, past the seek position. When Faust had already taken the records between the
   committed offset and that batch from the fetcher and dropped them (``getmany`` drops
   the records of partitions paused meanwhile, or of every partition when the flow
   stopped or the generation changed; aiokafka returns every partition's records when
   the live set of active partitions becomes empty during the fetch), the fetch that
   restarts at the committed offset is then dropped as "already read" up to that stale
   offset: those messages are never delivered and the partition's commits stall
   (faust-streaming issues #216, #221, #596). -> ``perform_seek``/``seek`` count the
   seeks, ``ThreadDelegateConsumer._getmany`` notes the count when a fetch starts, and
   ``_drain_messages`` still delivers a record fetched before a later seek but lets it
   move neither the read offset nor the gap bookkeeping: such a record is delivered
   again by the fetch from the seek position (a duplicate, never a loss).

Each replaced function keeps Faust's as ``__wrapped__``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["apply_faust_commit_fixes"]

_APPLIED = False


def _install(cls: type, fn: Callable[..., Any]) -> None:
    """Replaces ``cls.<fn's name>`` by ``fn``; Faust's version stays as ``__wrapped__``."""
    name = fn.__name__
    setattr(cls, name, functools.wraps(getattr(cls, name))(fn))


def apply_faust_commit_fixes() -> None:
    """Patches ``faust.transport.consumer.Consumer`` once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    from faust.transport import consumer as faust_consumer
    from faust.utils.functional import consecutive_numbers

    consumer_cls = faust_consumer.Consumer
    ensure_tp = faust_consumer.ensure_TP

    # 1.
    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        return None

    # 2.
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

    # 3. Faust's code, plus the lines marked "seek epoch".
    async def perform_seek(self: Any) -> None:
        read_offset = self._read_offset
        _committed_offsets = await self.seek_to_committed()
        read_offset.update(
            {
                tp: offset if offset is not None and offset >= 0 else None
                for tp, offset in _committed_offsets.items()
            }
        )
        committed_offsets = {
            ensure_tp(tp): offset if offset else None
            for tp, offset in _committed_offsets.items()
            if offset is not None
        }
        self._committed_offset.update(committed_offsets)
        self._seek_epoch += 1  # seek epoch

    async def seek(self: Any, partition: Any, offset: int) -> None:
        self.log.dev("SEEK %r -> %r", partition, offset)
        await self._seek(partition, offset)
        self._read_offset[ensure_tp(partition)] = offset if offset else None
        self._seek_epoch += 1  # seek epoch

    async def _getmany(self: Any, active_partitions: set[Any] | None, timeout: float) -> Any:
        self._fetch_epoch = self._seek_epoch  # seek epoch
        return await self._thread.getmany(active_partitions, timeout)

    async def _drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = getmany(timeout=1.0)

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            fetched_after_seek = self._fetch_epoch == self._seek_epoch
                            if gap > 1 and r_offset and fetched_after_seek:  # seek epoch
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            if self._fetch_epoch == self._seek_epoch:  # seek epoch
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)

    # Seeks done so far, and the count when the records being delivered were fetched.
    defaults: Mapping[str, int] = {"_seek_epoch": 0, "_fetch_epoch": 0}
    for name, value in defaults.items():
        setattr(consumer_cls, name, value)
    for fn in (_add_gap, _new_offset, perform_seek, seek, _drain_messages):
        _install(consumer_cls, fn)
    _install(faust_consumer.ThreadDelegateConsumer, _getmany)
    _APPLIED = True
