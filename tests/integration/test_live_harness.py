"""Helpers of the live-pipeline tests (no tests here): input, workers, table snapshots.

Each test gets its own topic namespace, consumer group, state directory and two
ClickHouse databases (``live_*`` for the worker, ``offline_*`` for the replay).

Equality between runs is defined on FINAL results (DESIGN §4-§7): the latest lineage
revision per row (``lineage_latest``, without ``revision``/hashes, which count how
the input was cut into batches), the final KPI value of every window (``kpi_final``,
without ``revision``), the set of breaches and of dead letters. Intermediate revisions
differ between any two runs that batch differently, live or offline.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clickhouse_driver import Client

from schemas.codec import Codec
from schemas.events import Event
from schemas.files import RejectedInput, read_events
from schemas.registry import registry_from_environ
from sinks.clickhouse.migrate import migrate
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import ClickHouseBackend
from streams.governance import DEMO_SETTINGS, build_processor, build_validator, load_settings
from streams.paths import REPO_ROOT
from streams.replay.driver import replay
from streams.runtime.settings import KafkaSettings, load_kafka_settings
from streams.topics import WorkerTopics

logging.getLogger("kafka").setLevel(logging.ERROR)

IMGOV = str(Path(sys.executable).parent / "imgov")
PARTITIONS = 3
IDLE_CLOSE_S = 15.0

LINEAGE_COLUMNS = (
    "site_id, study_uid, algorithm_name, finding_code, algorithm_version, modality, body_part,"
    " manufacturer, patient_ref, accession_ref, inference_event_id, inference_status,"
    " failure_reason, score, threshold, ai_result, study_available_at_ms,"
    " inference_completed_at_ms, alert_raised_at_ms, alert_delivered_at_ms,"
    " alert_first_response_at_ms, alert_final_state, alert_dismissed, alert_escalated,"
    " alert_channel, report_id, report_prelim_at_ms, report_final_at_ms, report_status,"
    " report_label, label_method, exam_completed_at_ms, addendum_count,"
    " critical_result_communicated_at_ms, outcome, time_to_result_ms, time_to_alert_ms,"
    " time_to_response_ms, report_tat_ms, interacted, review_candidate, completeness,"
    " arraySort(event_ids), updated_at_ms"
)
KPI_COLUMNS = (
    "kpi, window_size, site_id, algorithm_name, algorithm_version, finding_code,"
    " window_start_ms, window_end_ms, numerator, denominator, value, ci_low, ci_high, p50, p90"
)
BREACH_COLUMNS = (
    "breach_id, state, rule_id, kpi, severity, window_size, window_start_ms, window_end_ms,"
    " site_id, algorithm_name, algorithm_version, finding_code, value, threshold"
)


def clickhouse_service(command: str) -> None:
    """Runs ``infra/clickhouse/clickhouse.sh <command>`` (start, stop) for an outage."""
    script = REPO_ROOT / "infra" / "clickhouse" / "clickhouse.sh"
    subprocess.run(["bash", str(script), command], check=True, capture_output=True, timeout=120)


def ch_client(database: str = "system") -> Client:
    return Client(
        host="127.0.0.1",
        port=int(os.environ.get("IMGOV_CLICKHOUSE_PORT", "19000")),
        user="imgov",
        password="imgov",
        database=database,
        connect_timeout=5,
        send_receive_timeout=60,
    )


def create_database(name: str) -> None:
    settings = ClickHouseSettings(database=name)
    backend = ClickHouseBackend.connect(settings, create_database=True)
    try:
        migrate(backend)
    finally:
        backend.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def drop_database(name: str) -> None:
    client = ch_client()
    try:
        client.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        client.disconnect()


def simulate(
    path: Path, *, days: int = 5, sites: int = 2, per_day: int = 40, seed: int = 11
) -> list[Event]:
    """Writes a simulated run to ``path`` (JSON Lines) and returns its events."""
    subprocess.run(
        [
            IMGOV,
            "simulate",
            "--days",
            str(days),
            "--sites",
            str(sites),
            "--studies-per-day",
            str(per_day),
            "--seed",
            str(seed),
            "--out",
            str(path),
            "-q",
        ],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
    )
    return [e for e in read_events(path) if not isinstance(e, RejectedInput)]


def encoded(events: list[Event], topics: WorkerTopics) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, Avro value) of every event, in order."""
    codec = Codec(registry_from_environ(os.environ))
    by_type = {"inference": topics.inference, "alert": topics.alert, "report": topics.report}
    return [(by_type[e.event_type.value], e.study_uid.encode(), codec.encode(e)) for e in events]


def produce(
    bootstrap: str,
    messages: list[tuple[str, bytes | None, bytes]],
    headers: dict[int, list[tuple[str, bytes]]] | None = None,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Produces ``messages`` in order; ``client_options``: TLS/SASL (``LiveEnv.client_options``)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(client_options or {})
    )
    try:
        for i, (topic, key, value) in enumerate(messages):
            producer.send(topic, key=key, value=value, headers=(headers or {}).get(i))
        producer.flush(timeout=60)
    finally:
        producer.close()


class RateProducer(threading.Thread):
    """Produces ``messages`` in order at about ``rate`` per second, in the background."""

    def __init__(
        self, bootstrap: str, messages: list[tuple[str, bytes | None, bytes]], rate: float
    ) -> None:
        super().__init__(daemon=True, name="rate-producer")
        self._servers = bootstrap
        self._messages = messages
        self._rate = rate
        self.error: BaseException | None = None

    def run(self) -> None:
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(bootstrap_servers=self._servers, acks="all", linger_ms=5)
            start = time.monotonic()
            for i, (topic, key, value) in enumerate(self._messages):
                producer.send(topic, key=key, value=value)
                ahead = start + i / self._rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush(timeout=60)
            producer.close()
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout_s: float = 300) -> None:
        """Waits until every message is produced; raises what the thread raised."""
        self.join(timeout_s)
        assert not self.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def replay_into(database: str, path: Path) -> None:
    """The offline reference: ``replay`` of the same input into ``database``."""
    settings = load_settings(DEMO_SETTINGS, demo=True)
    sink = ClickHouseSink.from_settings(ClickHouseSettings(database=database))
    try:
        replay(
            [path],
            build_processor(settings),
            sink,
            build_validator(settings),
            record_events=True,
        )
    finally:
        sink.close()


@dataclass
class LiveEnv:
    """One test's namespace, group, databases and workers."""

    bootstrap: str
    tmp: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    partitions: int = PARTITIONS
    extra_env: dict[str, str] = field(default_factory=dict)
    """Worker settings over the defaults below (the benchmark runs production's)."""
    kpi_group: str | None = None
    """The consumer group of the contributions when a ``kpi`` role worker runs."""
    idle_close_s: float = IDLE_CLOSE_S
    """The workers' idle close (``wait_until_settled`` waits longer than it)."""
    keep_databases: bool = False
    """Leave the databases for a post-mortem (``opened`` drops them otherwise)."""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """Each worker's metrics port (a free one, kept across its restarts)."""
    kafka_env: dict[str, str] = field(default_factory=dict)
    """``IMGOV_KAFKA_*`` security settings (TLS, SASL) of the workers and of the harness's
    own clients; empty: PLAINTEXT."""

    def kafka_settings(self) -> KafkaSettings:
        """The Kafka settings of ``kafka_env`` on ``bootstrap``."""
        given = {k.removeprefix("IMGOV_KAFKA_").lower(): v for k, v in self.kafka_env.items()}
        return load_kafka_settings(**{**given, "bootstrap": self.bootstrap})

    def client_options(self) -> dict[str, Any]:
        """kafka-python arguments for ``kafka_env`` (empty for PLAINTEXT)."""
        if not self.kafka_env:
            return {}
        return self.kafka_settings().security().client_options()

    @property
    def namespace(self) -> str:
        return f"live{self.suffix}."

    @property
    def app_id(self) -> str:
        return f"imgov-live-{self.suffix}"

    @property
    def database(self) -> str:
        return f"live_{self.suffix}"

    @property
    def offline_database(self) -> str:
        return f"offline_{self.suffix}"

    @property
    def topics(self) -> WorkerTopics:
        return WorkerTopics.with_namespace(self.namespace)

    def worker_env(self, name: str) -> dict[str, str]:
        return {
            **os.environ,
            "IMGOV_KAFKA_BOOTSTRAP": self.bootstrap,
            "IMGOV_CLICKHOUSE_DATABASE": self.database,
            "IMGOV_WORKER_APP_ID": self.app_id,
            "IMGOV_WORKER_TOPIC_NAMESPACE": self.namespace,
            "IMGOV_WORKER_DATADIR": str(self.tmp / f"state-{self.suffix}-{name}"),
            "IMGOV_WORKER_PARTITIONS": str(self.partitions),
            "IMGOV_WORKER_IDLE_CLOSE_S": str(self.idle_close_s),
            "IMGOV_WORKER_BATCH_SIZE": "500",
            "IMGOV_WORKER_LOG_LEVEL": os.environ.get("IMGOV_TEST_WORKER_LOG_LEVEL", "warn"),
            "IMGOV_WORKER_METRICS_PORT": str(self.metrics_port(name)),
            **self.kafka_env,
            **self.extra_env,
        }

    def metrics_port(self, name: str) -> int:
        """Worker ``name``'s metrics port: free when first asked, then the same."""
        if name not in self.metrics_ports:
            self.metrics_ports[name] = free_port()
        return self.metrics_ports[name]

    def metrics_url(self, name: str = "w1") -> str:
        return f"http://127.0.0.1:{self.metrics_port(name)}/metrics"

    def create_topics(self) -> None:
        """Creates the namespaced topics as the worker would (before producing)."""
        from streams.governance import load_settings
        from streams.runtime.settings import WorkerSettings
        from streams.runtime.worker import WorkerPlan, ensure_worker_topics

        worker = WorkerSettings(
            app_id=self.app_id, topic_namespace=self.namespace, partitions=self.partitions
        )
        ensure_worker_topics(
            WorkerPlan(
                worker,
                load_settings(DEMO_SETTINGS, demo=True),
                self.kafka_settings(),
                ClickHouseSettings(database=self.database),
            )
        )

    def start_worker(self, name: str = "w1", role: str = "all") -> subprocess.Popen[bytes]:
        """Starts ``imgov worker --demo``; ``role`` lineage/kpi runs one stage."""
        log = (self.tmp / f"worker-{name}.log").open("ab")
        if role == "kpi":
            self.kpi_group = f"{self.app_id}-kpi"
        proc = subprocess.Popen(
            [IMGOV, "worker", "--demo", "--config", str(DEMO_SETTINGS)],
            cwd=REPO_ROOT,
            env={**self.worker_env(name), "IMGOV_WORKER_ROLE": role},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers[name] = proc
        return proc

    def kill_worker(self, name: str = "w1") -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_worker(self, name: str = "w1") -> None:
        proc = self.workers.pop(name)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.tmp.glob("worker-*.log"))
        )

    def assert_alive(self) -> None:
        for name, proc in self.workers.items():
            assert proc.poll() is None, f"worker {name} exited {proc.returncode}\n{self.logs()}"

    def group_lag(self) -> int:
        """Messages of the input and contributions topics not yet committed by the group."""
        from kafka import KafkaConsumer, TopicPartition
        from kafka.admin import KafkaAdminClient

        options = self.client_options()
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, **options)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, **options)
        try:
            topics = (*self.topics.inputs, self.topics.contributions)
            tps = [
                TopicPartition(t, p)
                for t in topics
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            ends = consumer.end_offsets(tps)
            done = dict(admin.list_group_offsets(self.app_id).get(self.app_id, {}))
            if self.kpi_group is not None:
                kpi = admin.list_group_offsets(self.kpi_group).get(self.kpi_group, {})
                done.update(
                    {tp: o for tp, o in kpi.items() if tp.topic == self.topics.contributions}
                )
            return sum(max(0, ends[tp] - (done[tp].offset if tp in done else 0)) for tp in tps)
        finally:
            consumer.close()
            admin.close()

    def committed(self, group: str | None = None) -> dict[tuple[str, int], int]:
        """The offsets ``group`` (the app's by default) has committed, per topic-partition."""
        from kafka.admin import KafkaAdminClient

        group = group or self.app_id
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, **self.client_options())
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {(tp.topic, tp.partition): o.offset for tp, o in offsets.items() if o.offset >= 0}

    def wait_for_progress(self, since: dict[tuple[str, int], int], timeout_s: float = 60) -> float:
        """Waits until the group commits input beyond ``since``; returns when (monotonic)."""
        inputs = set(self.topics.inputs)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                now = self.committed()
            except Exception:
                now = {}
            if any(o > since.get(tp, 0) for tp, o in now.items() if tp[0] in inputs):
                return time.monotonic()
            time.sleep(0.1)
        raise AssertionError(f"no input committed within {timeout_s} s\n{self.logs()}")

    def kill_and_restart(self, rng: random.Random, kills: int = 3) -> list[float]:
        """SIGKILLs the worker ``kills`` times at random moments while input flows.

        Each time the worker runs 4-9 s, is killed, stays away 2-5 s and is started
        again with the same state directory and app id. Returns, per restart, the
        seconds from starting the process until the group committed new input.
        """
        resumed = []
        for _ in range(kills):
            time.sleep(rng.uniform(4.0, 9.0))
            self.kill_worker()
            time.sleep(rng.uniform(2.0, 5.0))
            before = self.committed()
            started = time.monotonic()
            self.start_worker()
            resumed.append(self.wait_for_progress(before) - started)
        return resumed

    def fingerprint(self) -> tuple[Any, ...]:
        client = ch_client(self.database)
        try:
            return tuple(
                client.execute(f"SELECT count() FROM {t}")[0]
                for t in ("lineage_history", "kpi_values", "rejected_events", "kpi_breaches")
            )
        finally:
            client.disconnect()

    def wait_until_settled(self, timeout_s: float = 180, min_lineage: int = 1) -> None:
        """Waits until the group committed everything and the tables stopped changing
        for longer than the idle close takes (so KPI windows are final)."""
        deadline = time.monotonic() + timeout_s
        last: tuple[Any, ...] | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                lag = self.group_lag()
                print_ = self.fingerprint()
            except Exception:
                time.sleep(1)
                continue
            now = time.monotonic()
            if print_ != last or lag:
                last, stable_since = print_, now
            elif (
                print_[0][0] >= min_lineage
                and print_[1][0] > 0
                and now - stable_since > self.idle_close_s + 10
            ):
                return
            time.sleep(1)
        raise AssertionError(f"the worker did not settle in {timeout_s} s\n{self.logs()}")


@contextmanager
def opened(env: LiveEnv) -> Iterator[LiveEnv]:
    """Creates the env's databases and topics; stops its workers and drops them after."""
    create_database(env.database)
    create_database(env.offline_database)
    env.create_topics()
    try:
        yield env
    finally:
        env.stop_all()
        if not env.keep_databases:
            drop_database(env.database)
            drop_database(env.offline_database)


def final_tables(database: str) -> dict[str, Any]:
    """The FINAL results of a database, in a comparable form (see the module docstring)."""
    client = ch_client(database)
    try:
        lineage = client.execute(
            f"SELECT {LINEAGE_COLUMNS} FROM lineage_latest ORDER BY 1, 2, 3, 4"
        )
        # A window emptied by retraction is emitted with denominator 0 and no value
        # (aggregator contract): it says "no data", like an absent window. Runs that
        # batch differently create different empty windows (an intermediate revision
        # contributed there), so empty windows are left out of the comparison.
        kpis = client.execute(
            f"SELECT {KPI_COLUMNS} FROM kpi_final"
            " WHERE NOT (ifNull(denominator, 0) = 0 AND ifNull(numerator, 0) = 0 AND value IS NULL)"
            " ORDER BY 1, 2, 3, 4, 5, 6, 7"
        )
        breaches = client.execute(f"SELECT {BREACH_COLUMNS} FROM kpi_breaches FINAL ORDER BY 1, 2")
        rejected = client.execute(
            "SELECT reason, count() FROM rejected_events FINAL GROUP BY reason ORDER BY reason"
        )
        duplicates = client.execute(
            "SELECT count() FROM (SELECT site_id, study_uid, algorithm_name, finding_code,"
            " count() AS c FROM lineage_latest"
            " GROUP BY site_id, study_uid, algorithm_name, finding_code HAVING c > 1)"
        )[0][0]
    finally:
        client.disconnect()
    # repr: NaN != NaN would make equal tables compare unequal.
    return {
        "lineage": sorted(map(repr, lineage)),
        "kpis": sorted(map(repr, kpis)),
        "breaches": sorted(map(repr, breaches)),
        "rejected": rejected,
        "duplicate_rows_in_lineage_latest": duplicates,
    }


def diff_summary(live: dict[str, Any], offline: dict[str, Any]) -> str:
    parts = []
    for key in live:
        a, b = live[key], offline[key]
        if a != b:
            if isinstance(a, list):
                ca, cb = Counter(map(repr, a)), Counter(map(repr, b))
                only_live = list((ca - cb).elements())[:3]
                only_off = list((cb - ca).elements())[:3]
                parts.append(
                    f"{key}: live {len(a)} rows, offline {len(b)} rows;"
                    f" only live: {only_live}; only offline: {only_off}"
                )
            else:
                parts.append(f"{key}: live {a!r} offline {b!r}")
    return "\n".join(parts)


def assert_equal_to_replay(env: LiveEnv, events_file: Path) -> dict[str, Any]:
    """Asserts the live tables of ``env`` equal ``replay`` of ``events_file``; returns them."""
    replay_into(env.offline_database, events_file)
    live, offline = final_tables(env.database), final_tables(env.offline_database)
    assert live["duplicate_rows_in_lineage_latest"] == 0
    assert live == offline, diff_summary(live, offline)
    assert live["lineage"] and live["kpis"]
    return live


def write_measured(terminalreporter: pytest.TerminalReporter, title: str) -> None:
    """Prints, under ``title``, what the passed tests measured
    (``record_property("measured", ...)``): the figures a run must show."""
    lines = [
        f"{report.nodeid.rsplit('::', 1)[-1]}: {value}"
        for report in terminalreporter.stats.get("passed", [])
        for key, value in getattr(report, "user_properties", ())
        if key == "measured"
    ]
    if lines:
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
