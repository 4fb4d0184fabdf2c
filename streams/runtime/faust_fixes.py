"""Corrections to faust-streaming 0.15.3's offset commit, applied by ``build_app``.

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
   (faust-streaming issues #216, #221, #596). Delivered, those stale records would
   also come out of order, ahead of the messages before them. -> ``perform_seek`` and
   ``seek`` count the seeks of each partition, ``ThreadDelegateConsumer._getmany`` notes
   the counts when a fetch starts, and ``_drain_messages`` drops a record of a partition
   sought since its fetch: the fetch from the seek position brings it again, in order.

4. ``getmany`` drops the fetched records of a partition that was paused while the fetch
   was in flight, but the fetch had already moved that partition's position past them:
   nothing fetches them again (the drop fix 3 cannot see). -> the partition is sought
   back to the first record dropped, so it is fetched again when it is resumed.

5. Between a rebalance and the seek to the committed offsets that ends its recovery,
   a partition's committed offset is unknown (``on_partitions_revoked`` forgets it),
   and ``_new_offset`` then commits any run of acknowledged offsets: acknowledgements
   of messages fetched before the rebalance (a batch the KPI stage checkpointed while
   the rebalance ran) committed a contributions partition 51 offsets past the messages
   before them, which were never read again (1 run in about 10 of the 1-2-1 scaling
   test; KPI windows missing). -> from the start of a rebalance until ``perform_seek``
   has learnt a partition's committed offset, nothing of it is committed; what was
   acknowledged meanwhile counts once it follows the committed offset.

6. aiokafka's ``seek_to_committed`` seeks only a partition whose committed offset is
   above 0; one with none (or 0) stays at its fetch position. Fix 3 still counts the
   seek, so what was fetched from the log's start before it is dropped as stale, and
   nothing fetches it again: a worker taking over a contributions partition nobody
   had committed yet began at offset 825 and never read offsets 0-824 (thousands of
   KPI windows missing in the 2-worker backlog test). And with no committed offset
   known, ``_new_offset`` commits any run of acknowledged offsets: in another run the
   first delivery after the seek was offset 935, and Faust committed 941 over 0-934.
   -> such a partition is sought to the start of its log, which then counts as its
   committed offset: nothing is committed until the offsets from there are.

Each replaced function keeps Faust's as ``__wrapped__``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

__all__ = ["apply_faust_commit_fixes"]

_APPLIED = False


class _InstanceDict:
    """A per-instance ``dict`` attribute created on first read (Faust's consumers are
    built before the fix could add the attribute in ``__init__``)."""

    def __init__(self, slot: str) -> None:
        self._slot = slot

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__.get(self._slot)
        if value is None:
            value = obj.__dict__[self._slot] = {}
        return value

    def __set__(self, obj: Any, value: dict[Any, int]) -> None:
        obj.__dict__[self._slot] = value


def _unsettled(consumer: Any, tps: Iterable[Any]) -> None:
    """Marks ``tps`` as having no known committed offset until the next seek to it."""
    consumer._unsettled.update(dict.fromkeys(tps, True))


def _sought(consumer: Any, tps: Iterable[Any]) -> None:
    """Counts a seek of each of ``tps``: records fetched before it are stale."""
    epochs = consumer._seek_epochs
    for tp in tps:
        epochs[tp] = epochs.get(tp, 0) + 1


def _stale(consumer: Any, tp: Any) -> bool:
    """Whether ``tp`` was sought after the records being delivered were fetched."""
    return bool(consumer._seek_epochs.get(tp, 0) != consumer._fetch_epochs.get(tp, 0))


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
        if not acked or tp in self._unsettled:  # 5.
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
        _committed_offsets = dict(await self.seek_to_committed())
        unknown = [tp for tp, offset in _committed_offsets.items() if not offset or offset < 0]
        if unknown:  # 6.
            earliest = await self.earliest_offsets(*unknown)
            for tp in unknown:
                start = max(0, int(earliest.get(tp) or 0))
                await self._seek(tp, start)
                _committed_offsets[tp] = start
        read_offset.update(
            {
                tp: offset if offset is not None and offset >= 0 else None
                for tp, offset in _committed_offsets.items()
            }
        )
        committed_offsets = {
            ensure_tp(tp): offset if offset or tp in unknown else None  # 6.
            for tp, offset in _committed_offsets.items()
            if offset is not None
        }
        self._committed_offset.update(committed_offsets)
        _sought(self, (ensure_tp(tp) for tp in _committed_offsets))  # seek epoch
        for tp in _committed_offsets:  # 5.
            self._unsettled.pop(ensure_tp(tp), None)

    # 5.
    revoked_by_faust = consumer_cls.on_partitions_revoked
    assigned_by_faust = consumer_cls.on_partitions_assigned

    async def on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
        _unsettled(self, revoked)
        await revoked_by_faust(self, revoked)

    async def on_partitions_assigned(self: Any, assigned: set[Any], generation_id: int = 0) -> None:
        _unsettled(self, assigned)
        await assigned_by_faust(self, assigned, generation_id)

    async def seek(self: Any, partition: Any, offset: int) -> None:
        self.log.dev("SEEK %r -> %r", partition, offset)
        await self._seek(partition, offset)
        self._read_offset[ensure_tp(partition)] = offset if offset else None
        _sought(self, (ensure_tp(partition),))  # seek epoch

    async def _getmany(self: Any, active_partitions: set[Any] | None, timeout: float) -> Any:
        self._fetch_epochs = dict(self._seek_epochs)  # seek epoch
        return await self._thread.getmany(active_partitions, timeout)

    # 4. Faust's code, plus the lines marked "dropped".
    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        records, active_partitions = await self._wait_next_records(timeout)
        generation_id = self.app.consumer_generation_id
        if records is None or self.should_stop:
            return

        records_it = self.scheduler.iterate(records)
        to_message = self._to_message  # localize
        dropped: dict[Any, int] = {}  # dropped
        if self.flow_active:
            for tp, record in records_it:
                if not self.flow_active:
                    break
                new_generation_id = self.app.consumer_generation_id
                if new_generation_id != generation_id:
                    self.log.dev(
                        "Generation id changed from %r to %r. Cancelling getmany.",
                        generation_id,
                        new_generation_id,
                    )
                    break
                if (
                    active_partitions is None
                    or tp in active_partitions
                    or tp in self._buffered_partitions
                ):
                    highwater_mark = self.highwater(tp)
                    self.app.monitor.track_tp_end_offset(tp, highwater_mark)
                    # convert timestamp to seconds from int milliseconds.
                    yield tp, to_message(tp, record)
                elif tp not in dropped:  # dropped
                    dropped[tp] = record.offset  # dropped
            for tp, offset in dropped.items():  # dropped
                if tp in self.assignment():  # dropped
                    await self.seek(tp, offset)  # dropped: fetched again when resumed
        else:
            self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
            try:
                await self.perform_seek()
            except Exception as ex:
                self.log.warning(f"exception performing seek when flow not active {ex}")

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

                        if _stale(self, tp):  # seek epoch: fetched again from there
                            continue
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                            if not _stale(self, tp):  # seek epoch
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

    # Per partition: the seeks done so far, and their count when the records being
    # delivered were fetched (instance attributes, created on first use).
    consumer_cls._seek_epochs = _InstanceDict("_seek_epochs_")  # type: ignore[attr-defined]
    consumer_cls._fetch_epochs = _InstanceDict("_fetch_epochs_")  # type: ignore[attr-defined]
    # Partitions whose committed offset is not known since a rebalance (5.).
    consumer_cls._unsettled = _InstanceDict("_unsettled_")  # type: ignore[attr-defined]
    for fn in (
        _add_gap,
        _new_offset,
        perform_seek,
        seek,
        getmany,
        _drain_messages,
        on_partitions_revoked,
        on_partitions_assigned,
    ):
        _install(consumer_cls, fn)
    _install(faust_consumer.ThreadDelegateConsumer, _getmany)
    _APPLIED = True
