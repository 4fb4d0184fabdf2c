"""TLS and SASL against the real broker's SASL_SSL listener (infra/kafka/kafka.sh).

The listener, its CA and the test user's password file are found from the files kafka.sh
writes (``secure_kafka``). What is shown: the live pipeline runs over SASL_SSL with
SCRAM-SHA-512 (every client of the worker and of the harness on that listener); PLAIN
works too; a wrong password, an untrusted CA and a PLAINTEXT client are refused, by
imgov with a message that says so (not a hang or a stack trace), and by two third-party
clients (kcat and confluent-kafka), which also succeed with the right settings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from clickhouse_driver import Client
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from kafka.admin import KafkaAdminClient

from streams.kafka_security import KafkaLoginError, check_login_blocking
from streams.paths import REPO_ROOT
from streams.runtime.settings import load_kafka_settings
from streams.runtime.topic_admin import (
    CreationStatus,
    TopicAdminError,
    TopicRole,
    TopicSpec,
    create_topics,
)
from tests.integration.secure_kafka import SecureListener
from tests.integration.test_live_harness import (
    IMGOV,
    LiveEnv,
    assert_equal_to_replay,
    encoded,
    opened,
    produce,
    simulate,
)

pytestmark = pytest.mark.kafka


def _settings(listener: SecureListener, **overrides: str) -> dict[str, str]:
    """Settings names (not env names) of a client of ``listener``, for load_kafka_settings."""
    env = listener.env(**overrides)
    return {name.removeprefix("IMGOV_KAFKA_").lower(): value for name, value in env.items()}


def _imgov(args: list[str], env: dict[str, str], timeout_s: float = 60) -> tuple[int, str]:
    """Runs imgov with only ``env``'s IMGOV_KAFKA_* (none inherited); (exit code, output)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMGOV_KAFKA_")}
    done = subprocess.run(
        [IMGOV, *args],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _topic(prefix: str) -> TopicSpec:
    return TopicSpec(
        name=f"{prefix}.{uuid.uuid4().hex[:12]}",
        role=TopicRole.OUTPUT,
        partitions=1,
        replication_factor=1,
        config={},
    )


# --- (a) the live pipeline over SASL_SSL + SCRAM-SHA-512 ----------------------------------


@pytest.mark.clickhouse
def test_live_pipeline_over_sasl_ssl_scram_equals_offline_replay(
    kafka_sasl_ssl: SecureListener, clickhouse_writer: Client, tmp_path: Path
) -> None:
    env = LiveEnv(
        kafka_sasl_ssl.bootstrap, tmp_path, kafka_env=kafka_sasl_ssl.env(), idle_close_s=3.0
    )
    events_file = tmp_path / "events.jsonl"
    events = simulate(events_file, days=3, sites=1, per_day=30, seed=5)
    started = time.monotonic()
    with opened(env):  # topics created over SASL_SSL too
        env.start_worker()
        produce(env.bootstrap, encoded(events, env.topics), client_options=env.client_options())
        env.wait_until_settled(timeout_s=120)
        live = assert_equal_to_replay(env, events_file)
        logs = env.logs()
    password = kafka_sasl_ssl.password_file.read_text().strip()
    assert password not in logs, "the SASL password must never be logged"
    assert live["lineage"] and live["kpis"]
    print(f"live SASL_SSL run: {len(events)} events in {time.monotonic() - started:.1f} s")


# --- (b) a wrong password is refused, named as such -----------------------------------------


def test_wrong_password_stops_topics_create_with_an_authentication_error(
    kafka_sasl_ssl: SecureListener, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    started = time.monotonic()
    code, output = _imgov(
        ["topics", "create"], kafka_sasl_ssl.env(sasl_password_file=str(wrong)), timeout_s=30
    )
    assert code == 1, output
    assert "authentication failed" in output, output
    assert "imgov" in output and "Traceback" not in output, output
    assert time.monotonic() - started < 20, "a refused login must not wait for a timeout"


def test_worker_with_a_wrong_password_exits_naming_authentication(
    kafka_sasl_ssl: SecureListener, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    env = LiveEnv(
        kafka_sasl_ssl.bootstrap,
        tmp_path,
        kafka_env=kafka_sasl_ssl.env(sasl_password_file=str(wrong)),
    )
    worker = env.start_worker()
    try:
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    logs = env.logs()
    assert code != 0, logs
    assert "authentication failed" in logs, logs
    assert "Traceback" not in logs, logs


def test_wrong_password_is_refused_by_the_login_check(kafka_sasl_ssl: SecureListener) -> None:
    settings = load_kafka_settings(
        **{**_settings(kafka_sasl_ssl, sasl_password_file=""), "sasl_password": "wrong"}
    )
    with pytest.raises(KafkaLoginError, match="authentication failed"):
        check_login_blocking(settings.bootstrap, settings.security())
    with pytest.raises(TopicAdminError, match="authentication failed"):
        create_topics(settings.bootstrap, [_topic("sec")], security=settings.security())


# --- (c) a PLAINTEXT client cannot use the SASL_SSL listener --------------------------------


def test_plaintext_imgov_client_cannot_connect_to_the_sasl_ssl_listener(
    kafka_sasl_ssl: SecureListener,
) -> None:
    code, output = _imgov(
        ["topics", "create", "--timeout-ms", "3000"],
        {"IMGOV_KAFKA_BOOTSTRAP": kafka_sasl_ssl.bootstrap},
    )
    assert code == 1, output
    assert f"cannot reach Kafka at {kafka_sasl_ssl.bootstrap}" in output, output


def test_confluent_kafka_needs_tls_and_sasl_on_the_listener(
    kafka_sasl_ssl: SecureListener,
) -> None:
    secure = kafka_sasl_ssl.librdkafka_config()
    metadata = AdminClient(secure).list_topics(timeout=15)
    assert metadata.brokers, "the secured client sees the broker"

    plain = AdminClient({"bootstrap.servers": kafka_sasl_ssl.bootstrap})
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=5)


def _kcat() -> str:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if kcat is None:
        message = "kcat is not installed (make kafka-tools: Debian's kcat)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    return kcat


def _kcat_metadata(
    kcat: str, listener: SecureListener, config: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """``kcat -L`` with ``config`` in a -F file (mode 600: no password on the command line)."""
    properties = tmp_path / f"kcat-{uuid.uuid4().hex[:6]}.conf"
    properties.touch(mode=0o600)
    properties.write_text("".join(f"{k}={v}\n" for k, v in config.items()))
    return subprocess.run(
        [kcat, "-F", str(properties), "-b", listener.bootstrap, "-L", "-m", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_kcat_connects_with_sasl_ssl_and_not_without(
    kafka_sasl_ssl: SecureListener, tmp_path: Path
) -> None:
    # PLAIN: Debian's kcat links librdkafka 2.0, whose SCRAM proof Kafka 4.x brokers
    # reject (a nonce bug fixed in librdkafka 2.6.1); confluent-kafka (a newer
    # librdkafka) covers SCRAM above.
    kcat = _kcat()
    secure = {
        k: v
        for k, v in kafka_sasl_ssl.librdkafka_config(mechanism="PLAIN").items()
        if k != "bootstrap.servers"
    }

    accepted = _kcat_metadata(kcat, kafka_sasl_ssl, secure, tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    assert f"127.0.0.1:{kafka_sasl_ssl.port}" in accepted.stdout

    plaintext = _kcat_metadata(kcat, kafka_sasl_ssl, {}, tmp_path)
    assert plaintext.returncode != 0, plaintext.stdout

    wrong = _kcat_metadata(kcat, kafka_sasl_ssl, {**secure, "sasl.password": "wrong"}, tmp_path)
    assert wrong.returncode != 0, wrong.stdout
    assert "Authentication failed" in wrong.stderr, wrong.stderr


# --- (d) PLAIN over SSL ---------------------------------------------------------------------


def test_plain_over_ssl_creates_a_topic_with_imgov_and_lists_with_confluent_kafka(
    kafka_sasl_ssl: SecureListener,
) -> None:
    settings = load_kafka_settings(**_settings(kafka_sasl_ssl, sasl_mechanism="PLAIN"))
    spec = _topic("sec-plain")
    results = create_topics(settings.bootstrap, [spec], security=settings.security())
    assert [r.status for r in results] == [CreationStatus.CREATED]

    config = kafka_sasl_ssl.librdkafka_config(mechanism="PLAIN")
    admin = AdminClient(config)
    assert spec.name in admin.list_topics(timeout=15).topics
    admin.delete_topics([spec.name])


# --- (e) TLS: a client that does not trust the CA -------------------------------------------


def test_a_client_that_does_not_trust_the_ca_is_refused(
    kafka_sasl_ssl: SecureListener, tmp_path: Path
) -> None:
    untrusting = load_kafka_settings(**_settings(kafka_sasl_ssl, ssl_cafile=""))  # system CAs
    with pytest.raises(KafkaLoginError, match="certificate is not trusted"):
        check_login_blocking(untrusting.bootstrap, untrusting.security())

    code, output = _imgov(["topics", "create"], kafka_sasl_ssl.env(ssl_cafile=""), timeout_s=30)
    assert code == 1 and "certificate is not trusted" in output, output

    kcat = _kcat()
    no_ca = {
        k: v
        for k, v in kafka_sasl_ssl.librdkafka_config(mechanism="PLAIN").items()
        if k not in {"bootstrap.servers", "ssl.ca.location"}
    }
    refused = _kcat_metadata(kcat, kafka_sasl_ssl, no_ca, tmp_path)
    assert refused.returncode != 0, refused.stdout


def test_the_broker_certificate_names_localhost_and_127_0_0_1(
    kafka_sasl_ssl: SecureListener,
) -> None:
    for host in ("127.0.0.1", "localhost"):
        settings = load_kafka_settings(
            **{**_settings(kafka_sasl_ssl), "bootstrap": f"{host}:{kafka_sasl_ssl.port}"}
        )
        assert settings.ssl_check_hostname
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            bootstrap_timeout_ms=10_000,
            **settings.security().client_options(),
        )
        try:
            assert admin.describe_cluster()["brokers"]
        finally:
            admin.close()
