"""``streams.runtime.faust_fixes`` against Faust's own consumer code.

The consumer is the real one of a ``faust.App`` (aiokafka driver), with its drain loop
(``_drain_messages``), ``getmany``, ``perform_seek`` and ``seek``; only its consumer
thread, i.e. aiokafka, is replaced by ``FakeKafka``: a log per partition, a fetch
position and committed offsets, returning records as aiokafka's
``Fetcher.fetched_records`` does. Each scenario runs once with Faust's functions (kept
as ``__wrapped__`` by the fix) and once with the fixed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord  # type: ignore[import-untyped]
from faust.transport import consumer as faust_consumer
from faust.types import TP

from streams.runtime.faust_fixes import apply_faust_commit_fixes

STREAM = TP("probe-in", 0)
CHANGELOG = TP("probe-app-state-changelog", 0)
COMMITTED = 10
END = 30
BATCH = 5

# The methods the fix replaces on the consumer's classes.
PATCHED = (
    "perform_seek",
    "seek",
    "_getmany",
    "getmany",
    "_drain_messages",
    "_add_gap",
    "_new_offset",
)


class FakeKafka:
    """The consumer thread (aiokafka) behind ``ThreadDelegateConsumer``.

    ``getmany`` follows ``aiokafka.consumer.fetcher.Fetcher.fetched_records``: up to
    ``BATCH`` records of each partition in ``active_partitions`` -- or of every partition
    when that set is empty -- from the partition's position, which moves past them.
    ``before_fetch(n)`` and ``after_fetch(n)`` run while the n-th fetch is in flight,
    before and after it takes the records.
    """

    def __init__(self, ends: dict[TP, int], committed: dict[TP, int | None]) -> None:
        self.ends = ends
        self.committed = committed
        self.position = {tp: offset or 0 for tp, offset in committed.items()}
        self.fetches = 0
        self.starts: dict[TP, int] = {}
        """The first offset of each partition's log (0 unless retention removed some)."""
        self.before_fetch: Callable[[int], Awaitable[None]] = _nothing
        self.after_fetch: Callable[[int], Awaitable[None]] = _nothing

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        self.fetches += 1
        await self.before_fetch(self.fetches)
        records: dict[TP, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp, position in self.position.items():
            if active_partitions and tp not in active_partitions:
                continue
            offsets = range(position, min(position + BATCH, self.ends[tp]))
            if offsets:
                records[tp] = [_record(tp, offset) for offset in offsets]
                self.position[tp] = offsets[-1] + 1
        await self.after_fetch(self.fetches)
        if not records:
            await asyncio.sleep(0.005)  # a fetch that times out
        return records

    async def seek_to_committed(self) -> dict[TP, int | None]:
        for tp, offset in self.committed.items():
            if offset:  # aiokafka seeks only to a committed offset > 0
                self.position[tp] = offset
        return dict(self.committed)

    def seek(self, partition: TP, offset: int) -> None:
        self.position[partition] = offset

    async def earliest_offsets(self, *partitions: TP) -> dict[TP, int]:
        return {tp: self.starts.get(tp, 0) for tp in partitions}

    def assignment(self) -> set[TP]:
        return set(self.position)

    def highwater(self, tp: TP) -> int:
        return self.ends[tp]


async def _nothing(n: int) -> None:
    return None


def _record(tp: TP, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1_760_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=b"v",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1,
        headers=(),
    )


@pytest.fixture(scope="module", autouse=True)
def _fixes_applied() -> None:
    apply_faust_commit_fixes()


def _functions(fixed: bool) -> dict[str, Callable[..., Any]]:
    """The consumer's methods of ``PATCHED``: the fixed ones, or Faust's own."""
    functions = {}
    for name in PATCHED:
        fn = getattr(faust_consumer.ThreadDelegateConsumer, name)
        functions[name] = fn if fixed else fn.__wrapped__
    return functions


def _consumer(fixed: bool, kafka: FakeKafka) -> Any:
    """The consumer of a new app (never started), on ``kafka``, fixed or Faust's own."""
    app = faust.App("probe-app", broker="kafka://127.0.0.1:9", store="memory://")
    consumer: Any = app.consumer
    consumer._thread = kafka
    for name, fn in _functions(fixed).items():
        setattr(consumer, name, types.MethodType(fn, consumer))
    return consumer


async def _drain(
    consumer: Any,
    kafka: FakeKafka,
    deliver: Callable[[int], Awaitable[None]],
    others: list[tuple[TP, int]] | None = None,
) -> list[int]:
    """Runs the consumer's drain loop until the fetcher reached the end of ``STREAM``.

    Returns the offsets of ``STREAM`` handed to the streams (the conductor), in order;
    those of other partitions go to ``others``.
    """
    delivered: list[int] = []

    async def on_message(message: Any) -> None:
        if message.tp == STREAM:
            delivered.append(message.offset)
            await deliver(message.offset)
        elif others is not None:
            others.append((message.tp, message.offset))

    consumer.callback = on_message
    fetcher = types.SimpleNamespace(_stopped=asyncio.Event())
    task = asyncio.create_task(consumer._drain_messages(fetcher))
    try:
        async with asyncio.timeout(5):
            while kafka.position[STREAM] < END:
                await asyncio.sleep(0.005)
            # The drain loop fetches again once it delivered the last batch.
            last = kafka.fetches
            while kafka.fetches < last + 2:
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return delivered


def _commits(consumer: Any, delivered: list[int]) -> int | None:
    """Acknowledges every delivered message; returns the offset Faust then commits."""
    for offset in sorted(set(delivered)):
        consumer._acked[STREAM].append(offset)
        consumer._acked_index[STREAM].add(offset)
    return consumer._new_offset(STREAM)  # type: ignore[no-any-return]


async def _recovery_race(fixed: bool) -> tuple[list[int], int | None]:
    """Recovery of a table ends while the stream partition is being fetched.

    As in ``Recovery._restart_recovery`` and ``on_recovery_completed``: the changelog
    partition is read while the stream partition is paused; when it is done it is paused
    too, with a fetch in flight, so the set of active partitions is empty and the fetch
    takes the stream partition's records, which ``getmany`` drops (paused). Then the
    stream partition is resumed and, while the next batch is being delivered (the
    conductor awaits a full stream buffer), sought to its committed offset.
    """
    kafka = FakeKafka({STREAM: END, CHANGELOG: 0}, {STREAM: COMMITTED, CHANGELOG: None})
    consumer = _consumer(fixed, kafka)
    recovered = asyncio.Event()

    async def before_fetch(n: int) -> None:
        if n == 1:
            consumer.pause_partitions({CHANGELOG})
            recovered.set()

    async def on_recovery_completed() -> None:
        await recovered.wait()
        consumer.resume_partitions({STREAM})

    consumer._set_active_tps({STREAM, CHANGELOG})
    consumer.pause_partitions({STREAM})
    consumer.resume_flow()
    kafka.before_fetch = before_fetch
    completed = asyncio.create_task(on_recovery_completed())
    delivered = await _drain(consumer, kafka, _seek_once(consumer.perform_seek))
    await completed
    return delivered, _commits(consumer, delivered)


async def _seek_race(fixed: bool) -> tuple[list[int], int | None]:
    """``Consumer.seek`` to the committed offset while a fetched batch is delivered.

    The records before that batch were taken from the fetcher, then dropped by
    ``getmany``: the partition was paused (``Consumer.pause_partitions``, which changes
    the set of active partitions the fetch in flight uses) and resumed later.
    """
    kafka = FakeKafka({STREAM: END}, {STREAM: COMMITTED})
    consumer = _consumer(fixed, kafka)
    paused = asyncio.Event()

    async def after_fetch(n: int) -> None:
        if n == 1:
            consumer.pause_partitions({STREAM})
            paused.set()

    async def resume() -> None:
        await paused.wait()
        consumer.resume_partitions({STREAM})

    consumer._set_active_tps({STREAM})
    consumer._committed_offset[STREAM] = COMMITTED
    consumer._read_offset[STREAM] = COMMITTED
    consumer.resume_flow()
    kafka.after_fetch = after_fetch
    resumed = asyncio.create_task(resume())
    seek = _seek_once(lambda: consumer.seek(STREAM, COMMITTED))
    delivered = await _drain(consumer, kafka, seek)
    await resumed
    return delivered, _commits(consumer, delivered)


def _seek_once(seek: Callable[[], Awaitable[None]]) -> Callable[[int], Awaitable[None]]:
    """A delivery that runs ``seek`` while the first record is being delivered."""
    sought = False

    async def deliver(offset: int) -> None:
        nonlocal sought
        if not sought:
            sought = True
            await seek()

    return deliver


@pytest.mark.parametrize("scenario", [_recovery_race, _seek_race])
async def test_faust_never_delivers_the_offsets_before_a_stale_batch(
    scenario: Callable[[bool], Awaitable[tuple[list[int], int | None]]],
) -> None:
    delivered, committed = await scenario(False)

    missing = sorted(set(range(COMMITTED, END)) - set(delivered))
    assert missing == list(range(COMMITTED, COMMITTED + BATCH))
    assert delivered[0] == COMMITTED + BATCH  # the stale batch, then only what follows it
    assert committed is None  # commits of the partition stall at the committed offset


@pytest.mark.parametrize("scenario", [_recovery_race, _seek_race])
async def test_fixed_consumer_delivers_every_offset_from_the_committed_one(
    scenario: Callable[[bool], Awaitable[tuple[list[int], int | None]]],
) -> None:
    delivered, committed = await scenario(True)

    # Every offset from the committed one, in order: the records getmany dropped are
    # fetched again (fix 4), a stale batch is dropped and fetched again (fix 3); at most
    # the record being delivered when the seek came is delivered twice.
    assert sorted(set(delivered)) == list(range(COMMITTED, END))
    assert delivered == sorted(delivered)
    assert len(delivered) <= END - COMMITTED + 1
    assert committed == END


async def test_fixed_consumer_still_drops_records_below_a_seek_forward() -> None:
    """Records fetched before a seek forward (a changelog to its table's offset)."""
    kafka = FakeKafka({STREAM: END}, {STREAM: COMMITTED})
    consumer = _consumer(True, kafka)

    async def after_fetch(n: int) -> None:
        if n == 1:  # the fetch took offsets 10-14, then the partition is sought to 20
            await consumer.seek(STREAM, 20)

    consumer._set_active_tps({STREAM})
    consumer.resume_flow()
    kafka.after_fetch = after_fetch
    delivered = await _drain(consumer, kafka, lambda offset: asyncio.sleep(0))

    assert delivered == list(range(20, END))


async def test_a_seek_of_one_partition_leaves_the_records_of_another_alone() -> None:
    """Seek epochs are per partition: records of OTHER fetched with a batch of STREAM
    are delivered although STREAM is sought meanwhile (nothing would fetch them again)."""
    other = TP("probe-in", 1)
    kafka = FakeKafka({STREAM: END, other: END}, {STREAM: COMMITTED, other: COMMITTED})
    consumer = _consumer(True, kafka)
    delivered_other: list[tuple[TP, int]] = []

    async def after_fetch(n: int) -> None:
        if n == 1:  # both partitions' first batches are in flight
            await consumer.seek(STREAM, COMMITTED)

    consumer._set_active_tps({STREAM, other})
    consumer._read_offset[other] = COMMITTED
    consumer.resume_flow()
    kafka.after_fetch = after_fetch
    delivered = await _drain(consumer, kafka, lambda offset: asyncio.sleep(0), delivered_other)

    assert delivered == list(range(COMMITTED, END))  # STREAM's stale batch was dropped
    assert delivered_other == [(other, offset) for offset in range(COMMITTED, END)]


async def test_a_partition_with_no_committed_offset_is_read_from_its_start_after_a_seek() -> None:
    """The seek that ends a rebalance comes while the first batch of a partition nobody
    has committed is delivered: aiokafka leaves such a partition at its fetch position,
    so the rest of that batch, dropped as fetched before the seek, must be fetched again
    from offset 0 (a live worker lost a contributions partition's offsets 0-824)."""
    kafka = FakeKafka({STREAM: END}, {STREAM: None})
    consumer = _consumer(True, kafka)
    consumer._set_active_tps({STREAM})
    consumer.resume_flow()
    delivered = await _drain(consumer, kafka, _seek_once(consumer.perform_seek))

    assert sorted(set(delivered)) == list(range(END))
    assert delivered == sorted(delivered)


async def test_a_partition_with_no_committed_offset_commits_only_from_its_logs_start() -> None:
    """Faust commits any run of acknowledged offsets while no committed offset is known:
    a live worker whose first delivery after the seek was offset 935 committed 941 over
    offsets 0-934. The log's start now counts as the committed offset."""
    kafka = FakeKafka({STREAM: END}, {STREAM: None})
    kafka.starts[STREAM] = 3  # retention removed offsets 0-2
    consumer = _consumer(True, kafka)
    await consumer.perform_seek()
    assert kafka.position[STREAM] == 3 and consumer._committed_offset[STREAM] == 3
    assert _commits(consumer, [20, 21, 22]) is None  # beyond a gap: nothing
    assert _commits(consumer, list(range(3, 20))) == 23


async def _stale_acks_across_a_rebalance(fixed: bool) -> tuple[Any, int | None]:
    """Acknowledgements of a batch fetched before a rebalance arrive while the
    partition's committed offset is unknown (the revocation forgot it): offsets 20-24,
    while 10-19 were never processed. Returns the consumer and what it then commits."""
    kafka = FakeKafka({STREAM: END}, {STREAM: COMMITTED})
    consumer = _consumer(fixed, kafka)
    consumer._committed_offset[STREAM] = COMMITTED

    async def revoked_by_the_app(revoked: set[TP]) -> None:
        return None

    consumer._on_partitions_revoked = revoked_by_the_app  # the app's callbacks: tables etc.
    await consumer.on_partitions_revoked({STREAM})
    assert consumer._committed_offset[STREAM] is None
    return consumer, _commits(consumer, list(range(COMMITTED + 10, COMMITTED + 15)))


async def test_faust_commits_past_unprocessed_offsets_during_a_rebalance() -> None:
    _, committed = await _stale_acks_across_a_rebalance(False)
    assert committed == COMMITTED + 15  # offsets 10-19 are skipped for good


async def test_fixed_consumer_commits_nothing_until_the_seek_that_ends_a_rebalance() -> None:
    consumer, committed = await _stale_acks_across_a_rebalance(True)
    assert committed is None

    await consumer.perform_seek()  # the end of the rebalance: committed offset 10 again
    assert _commits(consumer, []) is None  # 20-24 do not follow 10
    assert _commits(consumer, list(range(COMMITTED, COMMITTED + 10))) == COMMITTED + 15


def test_apply_is_idempotent() -> None:
    before = {name: getattr(faust_consumer.ThreadDelegateConsumer, name) for name in PATCHED}
    apply_faust_commit_fixes()

    for name in PATCHED:
        fn = getattr(faust_consumer.ThreadDelegateConsumer, name)
        assert fn is before[name]
        assert not hasattr(fn.__wrapped__, "__wrapped__")
