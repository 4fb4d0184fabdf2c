"""Faust's own ceiling: a worker that does nothing but take, (produce) and acknowledge.

``bench_live`` runs it as a subprocess on its input topics, with a fresh consumer group:
``python -m tests.benchmarks.faust_passthrough BOOTSTRAP TOPICS TOTAL PRODUCE``. The
agent takes batches as the imgov worker does (``noack_take(2000, within=0.2)``), and
for each message produces ``PRODUCE`` copies to a scratch topic (flushed per batch, as
the worker flushes its outputs) before it acknowledges it. It prints one JSON line,
``{"messages_per_s": ...}``, from the first batch until ``TOTAL`` messages were
acknowledged. The imgov worker handles at least two consumed messages per input event
(the event, then its contribution in the KPI agent) and produces two or more (lineage
revision, contribution, watermarks, KPI values), so this bounds what any worker built
on Faust's stream API reaches here, before any work of its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import faust

BATCH = 2_000
WITHIN_S = 0.2


def main(bootstrap: str, topics: list[str], total: int, produce: int) -> None:
    tag = uuid.uuid4().hex[:10]
    scratch = f"bench-passthrough-{tag}"
    if produce:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(scratch, 3, 1)])
        finally:
            admin.close()
    app = faust.App(
        f"bench-passthrough-{tag}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        stream_wait_empty=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(
        *topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    seen = 0
    started: float | None = None

    @app.agent(source)  # type: ignore[untyped-decorator]
    async def passthrough(stream: Any) -> None:
        nonlocal seen, started
        async for events in stream.noack_take(BATCH, within=WITHIN_S):
            if started is None:
                started = time.perf_counter()
            if produce:
                for event in events:
                    for _ in range(produce):
                        await app.producer.send(
                            scratch, event.message.key, event.message.value, None, None, None
                        )
                await app.producer.flush()
            for event in events:
                await stream.ack(event)
            seen += len(events)
            if seen >= total:
                rate = seen / (time.perf_counter() - started)
                # Faust's worker sends print() to its log: to the process's stdout itself.
                os.write(1, (json.dumps({"messages_per_s": round(rate)}) + "\n").encode())
                os._exit(0)  # the measure is taken; a graceful stop only costs time

    sys.argv = [sys.argv[0], "worker", "--loglevel", "error", "--without-web"]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]))
