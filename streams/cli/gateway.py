"""``imgov gateway``: hospital protocols in, contract events out on Kafka (DESIGN §11).

One process; each listener is switched on or off by its setting (``IMGOV_GATEWAY_*``,
``streams.gateway.settings``) and binds to 127.0.0.1 unless told otherwise. All share
one idempotent Kafka producer (``streams.gateway.delivery``). On SIGTERM or Ctrl-C the
gateway, in order:

1. stops accepting connections on every listener;
2. lets every message in flight be stored and answered (within ``shutdown_timeout_s``;
   a message still in flight after it is not answered, so its sender sends it again);
3. flushes and stops the producer (and the rejected-events sink).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from schemas.errors import ImgovError
from streams.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from sinks.base import Sink
    from streams.gateway.delivery import Delivery
    from streams.kafka_security import KafkaSecurity
    from streams.runtime.settings import KafkaSettings

__all__ = ["gateway_command", "run_gateway"]

log = logging.getLogger("imgov.gateway")


class _Listener(Protocol):
    async def stop(self, timeout_s: float = 30.0) -> bool: ...


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def run_gateway(
    settings: GatewaySettings,
    bootstrap: str,
    namespace: str,
    stop: asyncio.Event,
    security: KafkaSecurity | None = None,
) -> bool:
    """Runs every enabled listener until ``stop`` is set, then stops them in order.

    The Kafka producer uses the TLS and SASL of ``security`` (PLAINTEXT when omitted).

    Returns:
        True when every message in flight at the stop was answered in time.

    Raises:
        ImgovError: Kafka (or ClickHouse, when enabled) cannot be reached on start.
        ValueError: a mapping file (HL7, FHIR, DICOM SR) is invalid.
        OSError: a listener's port cannot be bound.
    """
    # The protocol libraries (pydicom, pynetdicom, fhir.resources, aiohttp) take half a
    # second to import: only this command pays for them, not every imgov command.
    from schemas.codec import Codec
    from schemas.registry import registry_from_environ
    from schemas.validation import EventValidator
    from streams.gateway.delivery import KafkaDelivery
    from streams.gateway.dicom_sr import DicomScp, load_dicom_sr_mapping, start_dicom_scp
    from streams.gateway.fhir import load_fhir_mapping
    from streams.gateway.fhir_http import FhirListener
    from streams.gateway.hl7 import load_hl7_mapping
    from streams.gateway.metered import MeteredDelivery
    from streams.gateway.mllp import MllpListener
    from streams.metrics import GatewayMetrics, serve_metrics
    from streams.topics import WorkerTopics

    topics = WorkerTopics.with_namespace(namespace)
    metrics = GatewayMetrics() if settings.metrics_enabled else None
    server = None
    if metrics is not None:
        # The series exist from the start, at 0: ``increase()`` of a series born with
        # its first dead letter misses that first burst.
        for reason in ("UNDECODABLE", "VALIDATION_FAILED", "OVERSIZED"):
            metrics.dead_letters.labels("gateway", reason)
        # First, so that a port taken stops the start before anything connects.
        server = serve_metrics(metrics.registry, settings.metrics_host, settings.metrics_port)
        log.info("metrics at http://%s:%d/metrics", settings.metrics_host, server.port)

    def metered(protocol: str) -> Delivery:
        return delivery if metrics is None else MeteredDelivery(delivery, metrics, protocol, topics)

    codec = Codec(registry_from_environ(os.environ))
    rejected: Sink | None = None
    if settings.rejected_to_clickhouse:
        from sinks.clickhouse.settings import ClickHouseSettings
        from sinks.clickhouse.writer import ClickHouseSink

        rejected = ClickHouseSink.from_settings(
            ClickHouseSettings(), flush_timeout_s=settings.delivery_timeout_s
        )
    try:
        delivery = await KafkaDelivery.connect(
            bootstrap,
            codec,
            topics,
            timeout_s=settings.delivery_timeout_s,
            rejected=rejected,
            security=security,
        )
    except BaseException:
        if server is not None:
            server.close()
        raise
    listeners: list[tuple[str, _Listener]] = []
    try:
        if settings.mllp_enabled:
            mllp = MllpListener(
                metered("hl7"),
                load_hl7_mapping(settings.hl7_mapping),
                validator=EventValidator(_wall_clock_ms),
                max_message_bytes=settings.mllp_max_message_bytes,
                metrics=metrics,
            )
            await mllp.start(settings.host, settings.mllp_port)
            listeners.append(("HL7 v2 over MLLP", mllp))
            log.info("HL7 v2 over MLLP listening on %s:%d", settings.host, mllp.port)
        if settings.fhir_enabled:
            fhir = FhirListener(
                metered("fhir"),
                load_fhir_mapping(settings.fhir_mapping),
                validator=EventValidator(_wall_clock_ms),
                max_body_bytes=settings.fhir_max_body_bytes,
                metrics=metrics,
            )
            await fhir.start(settings.host, settings.fhir_port)
            listeners.append(("FHIR R4 over HTTP", fhir))
            log.info("FHIR R4 over HTTP listening on %s:%d/fhir", settings.host, fhir.port)
        if settings.dicom_enabled:
            dicom = DicomScp(
                start_dicom_scp(
                    load_dicom_sr_mapping(settings.dicom_sr_mapping),
                    metered("dicom_sr"),
                    asyncio.get_running_loop(),
                    host=settings.host,
                    port=settings.dicom_port,
                    ae_title=settings.dicom_ae_title,
                    timeout_s=settings.delivery_timeout_s,
                    validator=EventValidator(_wall_clock_ms),
                    metrics=metrics,
                )
            )
            listeners.append(("DICOM SR over C-STORE", dicom))
            log.info(
                "DICOM C-STORE SCP %s listening on %s:%d",
                settings.dicom_ae_title,
                settings.host,
                dicom.port,
            )
        if not listeners:
            log.warning("no listener is enabled (IMGOV_GATEWAY_*_ENABLED)")
        log.info("gateway ready: %d listener(s), topics behind %r", len(listeners), namespace)
        await stop.wait()
    finally:
        log.info("stopping: no new connections; finishing the messages in flight")
        # Step 1 for every listener before step 2 of any: stop accepting everywhere.
        stops = [listener.stop(settings.shutdown_timeout_s) for _, listener in listeners]
        finished = all(await asyncio.gather(*stops))
        if not finished:
            log.warning("shutdown timeout: messages still in flight were not answered")
        await delivery.close()
        if server is not None:
            server.close()
        log.info("stopped: producer flushed")
    return finished


def gateway_command(
    hl7_mapping: Annotated[
        Path | None,
        typer.Option(
            "--hl7-mapping",
            help="ORU^R01 mapping file (TOML, see streams/gateway/hl7.toml); "
            "default: IMGOV_GATEWAY_HL7_MAPPING, else the shipped one.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    fhir_mapping: Annotated[
        Path | None,
        typer.Option(
            "--fhir-mapping",
            help="FHIR R4 mapping file (TOML, see streams/gateway/fhir.toml); "
            "default: IMGOV_GATEWAY_FHIR_MAPPING, else the shipped one.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    dicom_sr_mapping: Annotated[
        Path | None,
        typer.Option(
            "--dicom-sr-mapping",
            help="DICOM SR (TID 1500) mapping file (TOML, see streams/gateway/dicom_sr.toml);"
            " default: IMGOV_GATEWAY_DICOM_SR_MAPPING, else the shipped one.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the settings, print them and exit.")
    ] = False,
) -> None:
    """Run the gateway (HL7 v2 over MLLP, FHIR R4 over HTTP, DICOM SR over C-STORE) until
    SIGINT/SIGTERM.

    Settings: IMGOV_GATEWAY_* (host, listeners and their ports, limits, shutdown
    timeout), IMGOV_KAFKA_* (bootstrap, TLS, SASL), the worker's topic namespace
    (IMGOV_WORKER_TOPIC_NAMESPACE) unless IMGOV_GATEWAY_TOPIC_NAMESPACE is set, and
    IMGOV_CLICKHOUSE_* when IMGOV_GATEWAY_REJECTED_TO_CLICKHOUSE is true. An ACK AA
    is sent only once the events are on Kafka (a FHIR 201, a C-STORE success likewise).
    """
    from pydantic import ValidationError

    from streams.gateway.dicom_sr import load_dicom_sr_mapping
    from streams.gateway.fhir import load_fhir_mapping
    from streams.gateway.hl7 import load_hl7_mapping
    from streams.runtime.settings import load_kafka_settings, load_worker_settings

    try:
        settings = GatewaySettings()
        given = {
            "hl7_mapping": hl7_mapping,
            "fhir_mapping": fhir_mapping,
            "dicom_sr_mapping": dicom_sr_mapping,
        }
        settings = settings.model_copy(update={k: v for k, v in given.items() if v is not None})
        namespace = settings.topic_namespace
        if namespace is None:
            namespace = load_worker_settings().topic_namespace
        kafka = load_kafka_settings()
        bootstrap = kafka.bootstrap
        load_hl7_mapping(settings.hl7_mapping)
        load_fhir_mapping(settings.fhir_mapping)
        load_dicom_sr_mapping(settings.dicom_sr_mapping)
    except (ValidationError, ImgovError, ValueError, OSError) as exc:
        typer.echo(f"imgov gateway: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    if check:
        shown = settings.model_dump(mode="json")
        shown.update(
            kafka_bootstrap=bootstrap,
            kafka_security=kafka.security().describe(),
            resolved_topic_namespace=namespace,
        )
        typer.echo(json.dumps(shown, indent=2))
        return
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        finished = asyncio.run(_until_signalled(settings, kafka, namespace))
    except (ImgovError, OSError) as exc:
        typer.echo(f"imgov gateway: {exc}", err=True)
        raise typer.Exit(1) from exc
    if not finished:
        raise typer.Exit(1)


async def _until_signalled(settings: GatewaySettings, kafka: KafkaSettings, namespace: str) -> bool:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)
    try:
        return await run_gateway(settings, kafka.bootstrap, namespace, stop, kafka.security())
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    log.info("%s received", signal.Signals(signum).name)
    stop.set()
