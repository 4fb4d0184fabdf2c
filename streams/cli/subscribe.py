"""``imgov subscribe``: read KPI values or breaches as an alerting system would.

Delivery to the governance topics is at least once (DESIGN §7): a worker that crashed
publishes again what it had produced but not yet committed. Every KPI and breach
message carries its identity in the ``imgov.message-id`` header
(``streams.runtime.outputs``), and this command is the reference subscriber: it decodes
each message, drops one whose identity it has already seen, and prints the rest as JSON
Lines. Any Kafka client can do the same with a set of recent identities.
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from enum import StrEnum
from typing import Annotated, Any

import typer

from schemas.codec import Codec
from schemas.errors import ImgovError
from schemas.records import Breach, KpiValue
from schemas.registry import registry_from_environ
from streams.cli.options import BootstrapOption
from streams.kafka_security import check_login_blocking
from streams.runtime.outputs import MESSAGE_ID_HEADER
from streams.runtime.settings import load_kafka_settings
from streams.topics import WorkerTopics

__all__ = ["SeenIds", "subscribe_command"]


class Stream(StrEnum):
    BREACHES = "breaches"
    KPIS = "kpis"


class SeenIds:
    """The most recent ``capacity`` message identities (oldest forgotten first).

    Repeats come soon after the original (at most a checkpoint interval of output
    is published again), so a bounded memory catches them.
    """

    def __init__(self, capacity: int = 1_000_000) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, message_id: bytes) -> bool:
        """Records ``message_id``; returns False when it was seen already."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True


def _message_id(headers: list[tuple[str, bytes]] | None) -> bytes | None:
    for name, value in headers or ():
        if name == MESSAGE_ID_HEADER:
            return value
    return None


def subscribe_command(
    stream: Annotated[Stream, typer.Argument(help="What to read: breaches or kpis.")],
    bootstrap: BootstrapOption = None,
    namespace: Annotated[
        str, typer.Option(help="The workers' topic namespace, if they have one.")
    ] = "",
    from_beginning: Annotated[
        bool,
        typer.Option("--from-beginning", help="Read the topic from its start, not only new."),
    ] = False,
    idle_timeout_s: Annotated[
        float,
        typer.Option(min=0, help="Stop after this long without a message (0: never stop)."),
    ] = 0.0,
    keep_duplicates: Annotated[
        bool,
        typer.Option("--keep-duplicates", help="Print repeated messages too (marked duplicate)."),
    ] = False,
) -> None:
    """Print KPI values or breaches as JSON Lines, without repeats.

    Each line is the decoded record plus its message identity; a message whose
    identity was printed already (a worker's restart published it again) is left
    out. The summary goes to stderr.
    """
    from kafka import KafkaConsumer

    topics = WorkerTopics.with_namespace(namespace)
    topic, record_type = (
        (topics.breach, Breach) if stream is Stream.BREACHES else (topics.kpi, KpiValue)
    )
    try:
        kafka = load_kafka_settings(bootstrap=bootstrap)
        check_login_blocking(kafka.bootstrap, kafka.security())
    except ImgovError as exc:
        typer.echo(f"imgov subscribe: {exc}", err=True)
        raise typer.Exit(2) from exc
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        **kafka.security().client_options(),
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(idle_timeout_s * 1000) if idle_timeout_s else float("inf"),
    )
    codec = Codec(registry_from_environ(os.environ))
    seen = SeenIds()
    printed = repeated = 0
    try:
        for message in consumer:
            message_id = _message_id(message.headers)
            fresh = message_id is None or seen.first_time(message_id)
            if not fresh:
                repeated += 1
                if not keep_duplicates:
                    continue
            record: dict[str, Any] = codec.decode(message.value, record_type).model_dump(
                mode="json"
            )
            record["message_id"] = None if message_id is None else message_id.decode()
            if not fresh:
                record["duplicate"] = True
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
            sys.stdout.flush()
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
        typer.echo(f"{printed} printed, {repeated} repeats dropped", err=True)
