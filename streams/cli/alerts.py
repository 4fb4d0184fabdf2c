"""``imgov alerts``: governance breaches to Alertmanager, consumer-group lag to Prometheus.

One process, three threads: the bridge (the main thread) reads ``governance.breach.v1``
from its beginning and keeps Alertmanager's alerts in step with it
(``streams.runtime.alerts``); a poller asks the brokers for the worker's consumer-group
lag (``streams.runtime.group_lag``); the metrics server serves both on 127.0.0.1.
SIGTERM or SIGINT stops all three; the open breaches' alerts then end by themselves
after four resend intervals unless another bridge posts them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from streams.cli.options import BootstrapOption

__all__ = ["alerts_command"]

log = logging.getLogger("imgov.alerts")

ALERTMANAGER_URL_ENV = "IMGOV_ALERTS_ALERTMANAGER_URL"
DEFAULT_ALERTMANAGER_URL = "http://127.0.0.1:9093"
DEFAULT_METRICS_PORT = 9812


def alerts_command(
    alertmanager: Annotated[
        str,
        typer.Option(
            "--alertmanager",
            envvar=ALERTMANAGER_URL_ENV,
            help="Alertmanager's base URL (or from the environment, see above).",
            show_envvar=False,
        ),
    ] = DEFAULT_ALERTMANAGER_URL,
    bootstrap: BootstrapOption = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="The workers' topic namespace [default: the worker's setting, see above]",
            show_default=False,
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="A consumer group whose lag to export (repeat for more) [default: the"
            " worker's two, see above]",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics server.")] = "127.0.0.1",
    metrics_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port of the metrics server (0: any free).")
    ] = DEFAULT_METRICS_PORT,
    resend_interval_s: Annotated[
        float,
        typer.Option(
            "--resend-interval", min=1, help="Seconds between posts of an open breach's alert."
        ),
    ] = 60.0,
    lag_interval_s: Annotated[
        float,
        typer.Option("--lag-interval", min=1, help="Seconds between consumer-group lag polls."),
    ] = 10.0,
    link_base: Annotated[
        str | None,
        typer.Option(
            help="Base URL of each alert's link (its breach id is appended, or fills"
            " {breach_id} in a template); none when omitted.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Post governance breaches to Alertmanager and export consumer-group lag, until
    SIGINT/SIGTERM.

    Reads the breach topic from its beginning on every start (nothing is committed), so
    open breaches are posted again and resolved ones stay resolved. An open breach's
    alert is re-posted every resend interval and ends four intervals after the last
    post; a resolved one is posted once with its resolution time. Alertmanager down:
    retried with backoff. The lag of the consumer groups, as the brokers see it, is
    served with the bridge's other metrics at http://HOST:PORT/metrics.

    Settings from the environment: IMGOV_ALERTS_ALERTMANAGER_URL (the Alertmanager URL),
    IMGOV_KAFKA_* (bootstrap, TLS, SASL), the worker's IMGOV_WORKER_TOPIC_NAMESPACE (the default
    namespace) and IMGOV_WORKER_APP_ID (the default groups: that id, and the same with
    -kpi appended).
    """
    from pydantic import ValidationError

    from schemas.codec import Codec
    from schemas.errors import ImgovError
    from schemas.registry import registry_from_environ
    from streams.kafka_security import check_login_blocking
    from streams.metrics import BridgeMetrics, serve_metrics
    from streams.runtime.alerts import (
        AlertmanagerClient,
        BreachAlertBook,
        BreachAlertBridge,
        parse_link_base,
    )
    from streams.runtime.group_lag import GroupLagPoller, default_groups
    from streams.runtime.settings import WorkerSettings, load_kafka_settings
    from streams.topics import WorkerTopics

    level = log_level.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise typer.BadParameter(f"not a log level: {log_level!r}", param_hint="--log-level")
    try:
        client = AlertmanagerClient(alertmanager)
        if link_base is not None:
            link_base = parse_link_base(link_base)
    except ValueError as exc:
        typer.echo(f"imgov alerts: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        worker = WorkerSettings()
        kafka = load_kafka_settings(bootstrap=bootstrap)
        bootstrap, security = kafka.bootstrap, kafka.security()
        codec = Codec(registry_from_environ(os.environ))
    except (ValidationError, ImgovError) as exc:
        typer.echo(f"imgov alerts: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        # A refused login would otherwise be retried quietly for ever (see below).
        check_login_blocking(bootstrap, security)
    except ImgovError as exc:
        typer.echo(f"imgov alerts: {exc}", err=True)
        raise typer.Exit(1) from exc
    topic = WorkerTopics.with_namespace(
        worker.topic_namespace if namespace is None else namespace
    ).breach
    groups = tuple(group) if group else default_groups(worker.app_id)

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every failed connection attempt at WARNING/ERROR: the bridge says
    # once what it cannot reach.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)

    metrics = BridgeMetrics()
    try:
        server = serve_metrics(metrics.registry, metrics_host, metrics_port)
    except OSError as exc:
        typer.echo(
            f"imgov alerts: cannot serve metrics on {metrics_host}:{metrics_port}: {exc}", err=True
        )
        raise typer.Exit(1) from exc
    typer.echo(f"imgov alerts: metrics on http://{metrics_host}:{server.port}/metrics", err=True)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    poller = GroupLagPoller(bootstrap, groups, metrics, security=security)
    lag_thread = threading.Thread(
        target=poller.run, args=(stop, lag_interval_s), name="imgov-group-lag", daemon=True
    )
    bridge = BreachAlertBridge(
        bootstrap=bootstrap,
        topic=topic,
        book=BreachAlertBook(resend_interval_ms=int(resend_interval_s * 1000), link_base=link_base),
        poster=client.post,
        codec=codec,
        metrics=metrics,
        security=security,
    )
    log.info(
        "breaches from %s at %s to %s; lag of %s every %g s",
        topic,
        bootstrap,
        client.url,
        ", ".join(groups),
        lag_interval_s,
    )
    lag_thread.start()
    try:
        bridge.run(stop)
    finally:
        stop.set()
        # A poll that waits on a broker that is down may outlast this: the thread is a
        # daemon, so the process ends anyway.
        lag_thread.join(timeout=10)
        server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.info("stopped")
