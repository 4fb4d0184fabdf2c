"""Settings of ``imgov gateway``: which listeners run, where, and their limits.

Read from ``IMGOV_GATEWAY_*`` environment variables (e.g. ``IMGOV_GATEWAY_MLLP_PORT``);
Kafka is reached through ``IMGOV_KAFKA_BOOTSTRAP`` and the topic namespace is the
worker's (``IMGOV_WORKER_TOPIC_NAMESPACE``) unless ``topic_namespace`` is set here, so
a gateway feeds the worker next to it by default. Every listener binds to ``host``,
127.0.0.1 unless an operator opens it to the hospital network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    """What an operator may set for the gateway.

    Attributes:
        host: the address every listener binds to.
        topic_namespace: prefix of every topic name; None: the worker's setting.
        delivery_timeout_s: the longest wait for Kafka to acknowledge one message's
            events; past it the sender is told to send the message again.
        shutdown_timeout_s: the bound on a graceful stop (stop accepting, finish the
            messages in flight, flush the producer).
        rejected_to_clickhouse: also write dead letters to ClickHouse
            ``rejected_events`` (``IMGOV_CLICKHOUSE_*``); otherwise they reach only
            the dead-letter topic.
        log_level: the gateway's log level.
        mllp_enabled: run the HL7 v2 listener (MLLP over TCP).
        mllp_port: its port (2575 is the port IANA lists for HL7 over MLLP).
        mllp_max_message_bytes: a larger MLLP frame is refused (OVERSIZED).
        hl7_mapping: the ORU^R01 mapping file; None: the shipped ``hl7.toml``.
        fhir_enabled: run the FHIR R4 HTTP listener (base path ``/fhir``).
        fhir_port: its port.
        fhir_max_body_bytes: a larger request body is refused (413, OVERSIZED).
        fhir_mapping: the DiagnosticReport/Communication mapping file; None: the
            shipped ``fhir.toml``.
        dicom_enabled: run the DICOM C-STORE SCP (SR AI results).
        dicom_port: its port (11112 is the registered DICOM port).
        dicom_ae_title: the SCP's application entity title.
        dicom_sr_mapping: the TID 1500 mapping file; None: the shipped
            ``dicom_sr.toml``.
        metrics_enabled: serve Prometheus metrics (``streams.metrics``) over HTTP.
        metrics_host: their address (loopback by default).
        metrics_port: their port (0: any free port, logged at start).
    """

    model_config = SettingsConfigDict(env_prefix="IMGOV_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    topic_namespace: str | None = Field(None, pattern=r"^[a-zA-Z0-9._-]{0,100}$")
    delivery_timeout_s: float = Field(30.0, gt=0, le=600)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=3600)
    rejected_to_clickhouse: bool = False
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    mllp_enabled: bool = True
    mllp_port: int = Field(2575, ge=0, le=65535)
    mllp_max_message_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    hl7_mapping: Path | None = None

    fhir_enabled: bool = True
    fhir_port: int = Field(8080, ge=0, le=65535)
    fhir_max_body_bytes: int = Field(4 << 20, ge=1024, le=256 << 20)
    fhir_mapping: Path | None = None

    dicom_enabled: bool = True
    dicom_port: int = Field(11112, ge=0, le=65535)
    dicom_ae_title: str = Field("IMGOV", pattern=r"^[ -~]{1,16}$")
    dicom_sr_mapping: Path | None = None

    metrics_enabled: bool = True
    metrics_host: str = Field("127.0.0.1", min_length=1)
    metrics_port: int = Field(9811, ge=0, le=65535)
